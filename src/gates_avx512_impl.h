/* Template body of gates_avx512.c, included once per type with REAL, V (the vector type),
 * VOP(op) (the intrinsic for this type), MASK, LANES and SUF(name) defined, and
 * SUF(exp_poly)(r) (exp(r) on |r| <= ln2/2, the polynomial of gates.c) and the constants
 * EXP_MAX, EXP_MIN, LN2_HI, LN2_LO, LOG2E. */

/* exp(x): k = round(x/ln2), r = x - k·ln2 in two parts, the polynomial, then p·2^k by
 * vscalef. The clamps (as in gates.c) keep p·2^k finite and let NaN through: vmin/vmax
 * return their second operand when either is NaN. */
AVX512_INLINE V SUF(exp_v)(V x)
{
    x = VOP(min)(VOP(set1)(EXP_MAX), x);
    x = VOP(max)(VOP(set1)(EXP_MIN), x);
    V k = VOP(roundscale)(VOP(mul)(x, VOP(set1)(LOG2E)),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = VOP(fnmadd)(k, VOP(set1)(LN2_HI), x);
    r = VOP(fnmadd)(k, VOP(set1)(LN2_LO), r);
    return VOP(scalef)(SUF(exp_poly)(r), k);
}

/* σ(x) = 1 / (1 + exp(-x)) */
AVX512_INLINE V SUF(sigmoid_v)(V x)
{
    const V one = VOP(set1)(1);
    return VOP(div)(one, VOP(add)(one, SUF(exp_v)(VOP(sub)(VOP(setzero)(), x))));
}

/* tanh(x) = 2σ(2x) - 1 */
AVX512_INLINE V SUF(tanh_v)(V x)
{
    const V one = VOP(set1)(1);
    V e = SUF(exp_v)(VOP(mul)(x, VOP(set1)(-2)));
    return VOP(sub)(VOP(div)(VOP(set1)(2), VOP(add)(one, e)), one);
}

/* The lanes that exist when `remaining` values are left. */
AVX512_INLINE MASK SUF(lanes)(long remaining)
{
    return remaining >= LANES ? (MASK)~0u : (MASK)((1u << remaining) - 1u);
}

/* The loop of gates_impl.h's forward_body, LANES hidden units at a time (masked at the
 * end of a row); flags constant after inlining. */
AVX512_INLINE void SUF(forward_body)(int rows, int H, int u0, int u1, REAL *gates,
                                     const REAL *bias, const REAL *peep, const REAL *c_prev,
                                     REAL *c, REAL *h, const int use_peep,
                                     const int use_cprev)
{
    const int n = u1 - u0;
    bias += u0;
    if (use_peep)
        peep += u0;
    for (int r = 0; r < rows; r++) {
        REAL *gi = gates + (size_t)r * 4 * H + u0;
        REAL *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        const REAL *cp = use_cprev ? c_prev + (size_t)r * H + u0 : c_prev;
        REAL *cr = c + (size_t)r * H + u0, *hr = h + (size_t)r * H + u0;
        for (int j = 0; j < n; j += LANES) {
            const MASK m = SUF(lanes)(n - j);
            V cpj = use_cprev ? VOP(maskz_loadu)(m, cp + j) : VOP(setzero)();
            V ai = VOP(add)(VOP(maskz_loadu)(m, gi + j), VOP(maskz_loadu)(m, bias + j));
            V af = VOP(add)(VOP(maskz_loadu)(m, gf + j), VOP(maskz_loadu)(m, bias + H + j));
            V ag = VOP(add)(VOP(maskz_loadu)(m, gg + j),
                            VOP(maskz_loadu)(m, bias + 2 * H + j));
            V ao = VOP(add)(VOP(maskz_loadu)(m, go + j),
                            VOP(maskz_loadu)(m, bias + 3 * H + j));
            if (use_peep) {
                ai = VOP(fmadd)(VOP(maskz_loadu)(m, peep + j), cpj, ai);
                af = VOP(fmadd)(VOP(maskz_loadu)(m, peep + H + j), cpj, af);
            }
            V i = SUF(sigmoid_v)(ai), f = SUF(sigmoid_v)(af), g = SUF(tanh_v)(ag);
            V cn = VOP(fmadd)(f, cpj, VOP(mul)(i, g));
            if (use_peep)
                ao = VOP(fmadd)(VOP(maskz_loadu)(m, peep + 2 * H + j), cn, ao);
            V o = SUF(sigmoid_v)(ao);
            VOP(mask_storeu)(gi + j, m, i);
            VOP(mask_storeu)(gf + j, m, f);
            VOP(mask_storeu)(gg + j, m, g);
            VOP(mask_storeu)(go + j, m, o);
            VOP(mask_storeu)(cr + j, m, cn);
            VOP(mask_storeu)(hr + j, m, VOP(mul)(o, SUF(tanh_v)(cn)));
        }
    }
}

AVX512 void SUF(clstm_gates_forward_units_avx512)(int rows, int H, int u0, int u1,
                                                  REAL *gates, const REAL *bias,
                                                  const REAL *peephole, const REAL *c_prev,
                                                  REAL *c, REAL *h)
{
    CLSTM_WITH_GATE_FLAGS(SUF(forward_body), peephole, c_prev, rows, H, u0, u1, gates, bias, peephole, c_prev, c, h);
}

/* The loop of gates_impl.h's backward_body, LANES hidden units at a time. */
AVX512_INLINE void SUF(backward_body)(int rows, int H, int u0, int u1, REAL *gates,
                                      const REAL *peep, const REAL *c_prev, const REAL *c,
                                      const REAL *dh, REAL *dc, const int use_peep,
                                      const int use_cprev)
{
    const int n = u1 - u0;
    const V one = VOP(set1)(1);
    if (use_peep)
        peep += u0;
    for (int r = 0; r < rows; r++) {
        REAL *gi = gates + (size_t)r * 4 * H + u0;
        REAL *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        const REAL *cp = use_cprev ? c_prev + (size_t)r * H + u0 : c_prev;
        const REAL *cr = c + (size_t)r * H + u0, *dhr = dh + (size_t)r * H + u0;
        REAL *dcr = dc + (size_t)r * H + u0;
        for (int j = 0; j < n; j += LANES) {
            const MASK m = SUF(lanes)(n - j);
            V i = VOP(maskz_loadu)(m, gi + j), f = VOP(maskz_loadu)(m, gf + j);
            V g = VOP(maskz_loadu)(m, gg + j), o = VOP(maskz_loadu)(m, go + j);
            V cpj = use_cprev ? VOP(maskz_loadu)(m, cp + j) : VOP(setzero)();
            V tc = SUF(tanh_v)(VOP(maskz_loadu)(m, cr + j));
            V dhj = VOP(maskz_loadu)(m, dhr + j);
            V dho = VOP(mul)(dhj, o);
            V dao = VOP(mul)(VOP(mul)(dhj, tc), VOP(mul)(o, VOP(sub)(one, o)));
            V dcn = VOP(fmadd)(dho, VOP(fnmadd)(tc, tc, one), VOP(maskz_loadu)(m, dcr + j));
            if (use_peep)
                dcn = VOP(fmadd)(dao, VOP(maskz_loadu)(m, peep + 2 * H + j), dcn);
            V dai = VOP(mul)(VOP(mul)(dcn, g), VOP(mul)(i, VOP(sub)(one, i)));
            V daf = VOP(mul)(VOP(mul)(dcn, cpj), VOP(mul)(f, VOP(sub)(one, f)));
            V dag = VOP(mul)(VOP(mul)(dcn, i), VOP(fnmadd)(g, g, one));
            V dcp = VOP(mul)(dcn, f);
            if (use_peep) {
                dcp = VOP(fmadd)(dai, VOP(maskz_loadu)(m, peep + j), dcp);
                dcp = VOP(fmadd)(daf, VOP(maskz_loadu)(m, peep + H + j), dcp);
            }
            VOP(mask_storeu)(gi + j, m, dai);
            VOP(mask_storeu)(gf + j, m, daf);
            VOP(mask_storeu)(gg + j, m, dag);
            VOP(mask_storeu)(go + j, m, dao);
            VOP(mask_storeu)(dcr + j, m, dcp);
        }
    }
}

AVX512 void SUF(clstm_gates_backward_units_avx512)(int rows, int H, int u0, int u1,
                                                   REAL *gates, const REAL *peephole,
                                                   const REAL *c_prev, const REAL *c,
                                                   const REAL *dh, REAL *dc)
{
    CLSTM_WITH_GATE_FLAGS(SUF(backward_body), peephole, c_prev, rows, H, u0, u1, gates, peephole, c_prev, c, dh, dc);
}

AVX512 void SUF(clstm_sigmoid_avx512)(long n, const REAL *x, REAL *y)
{
    for (long k = 0; k < n; k += LANES) {
        const MASK m = SUF(lanes)(n - k);
        VOP(mask_storeu)(y + k, m, SUF(sigmoid_v)(VOP(maskz_loadu)(m, x + k)));
    }
}

AVX512 void SUF(clstm_tanh_avx512)(long n, const REAL *x, REAL *y)
{
    for (long k = 0; k < n; k += LANES) {
        const MASK m = SUF(lanes)(n - k);
        VOP(mask_storeu)(y + k, m, SUF(tanh_v)(VOP(maskz_loadu)(m, x + k)));
    }
}
