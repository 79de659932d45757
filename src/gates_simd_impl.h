/* Template body of the intrinsics gate loops (gates_avx512.c, gates_avx2.c): one template
 * for both vector widths, included once per type and ISA. The includer defines
 *   REAL, V (the vector type), VOP(op) (this type's intrinsic, e.g. _mm256_op_ps), LANES,
 *   SUF(name) (the type's suffix), ISA_SUF(name) (the ISA's and the type's, e.g.
 *   name##_avx2_f32),
 *   SIMD_INLINE / SIMD_FN (always-inline / public function with the ISA's target),
 *   MASK, SUF(tail_mask)(remaining), VLOAD_MASKED(m, p), VSTORE_MASKED(p, m, v) (the lanes
 *   of a row's last, partial vector: masked loads read zeros there and never fault),
 *   SUF(round_v)(t) (t rounded to the nearest integer) and SUF(scale_v)(p, k) (p·2^k for an
 *   integral k in the clamped range),
 * and the constants EXP_MAX, EXP_MIN, LN2_HI, LN2_LO, LOG2E. Its end undefines those
 * parameters (not SIMD_INLINE/SIMD_FN), so the next instantiation starts clean. */

/* Whole vectors load and store plainly; only a row's tail uses the masked forms (AVX2's
 * vmaskmov store is slow on AMD). `full` is a constant after inlining. */
#define SIMD_LOAD(full, m, p) ((full) ? VOP(loadu)(p) : VLOAD_MASKED(m, p))
#define SIMD_STORE(full, m, p, v)                                                           \
    do {                                                                                    \
        if (full)                                                                           \
            VOP(storeu)(p, v);                                                              \
        else                                                                                \
            VSTORE_MASKED(p, m, v);                                                         \
    } while (0)

/* exp(r) on |r| <= ln2/2: the polynomials of gates.c (float: degree 5, fitted for least
 * relative error; double: degree-13 Taylor). */
SIMD_INLINE V SUF(exp_poly)(V r)
{
    V p;
    if (sizeof(REAL) == 4) {
        p = VOP(set1)((REAL)0.00829765074806159);
        p = VOP(fmadd)(p, r, VOP(set1)((REAL)0.04191538581951764));
        p = VOP(fmadd)(p, r, VOP(set1)((REAL)0.16667574817608277));
        p = VOP(fmadd)(p, r, VOP(set1)((REAL)0.49998894818154155));
        p = VOP(fmadd)(p, r, VOP(set1)((REAL)0.9999996919580132));
        return VOP(fmadd)(p, r, VOP(set1)((REAL)1.000000071657714));
    }
    static const double c[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                               1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                               1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    p = VOP(set1)((REAL)c[0]);
#pragma GCC unroll 16
    for (int i = 1; i < 14; i++)
        p = VOP(fmadd)(p, r, VOP(set1)((REAL)c[i]));
    return p;
}

/* exp(x): k = round(x/ln2), r = x - k·ln2 in two parts, the polynomial, then p·2^k. The
 * clamps (as in gates.c) keep p·2^k finite and let NaN through: vmin/vmax return their
 * second operand when either is NaN, and a NaN r makes p NaN whatever 2^k became. */
SIMD_INLINE V SUF(exp_v)(V x)
{
    x = VOP(min)(VOP(set1)(EXP_MAX), x);
    x = VOP(max)(VOP(set1)(EXP_MIN), x);
    V k = SUF(round_v)(VOP(mul)(x, VOP(set1)(LOG2E)));
    V r = VOP(fnmadd)(k, VOP(set1)(LN2_HI), x);
    r = VOP(fnmadd)(k, VOP(set1)(LN2_LO), r);
    return SUF(scale_v)(SUF(exp_poly)(r), k);
}

/* σ(x) = 1 / (1 + exp(-x)) */
SIMD_INLINE V SUF(sigmoid_v)(V x)
{
    const V one = VOP(set1)(1);
    return VOP(div)(one, VOP(add)(one, SUF(exp_v)(VOP(sub)(VOP(setzero)(), x))));
}

/* tanh(x) = 2σ(2x) - 1 */
SIMD_INLINE V SUF(tanh_v)(V x)
{
    const V one = VOP(set1)(1);
    V e = SUF(exp_v)(VOP(mul)(x, VOP(set1)(-2)));
    return VOP(sub)(VOP(div)(VOP(set1)(2), VOP(add)(one, e)), one);
}

/* One vector of gates_impl.h's forward loop: units j .. j+LANES-1 of one row (only the
 * lanes of m when !full). */
SIMD_INLINE void SUF(forward_vec)(int H, int j, REAL *gi, const REAL *bias, const REAL *peep,
                                  const REAL *cp, REAL *cr, REAL *hr, const int use_peep,
                                  const int use_cprev, const int full, MASK m)
{
    REAL *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
    V cpj = use_cprev ? SIMD_LOAD(full, m, cp + j) : VOP(setzero)();
    V ai = VOP(add)(SIMD_LOAD(full, m, gi + j), SIMD_LOAD(full, m, bias + j));
    V af = VOP(add)(SIMD_LOAD(full, m, gf + j), SIMD_LOAD(full, m, bias + H + j));
    V ag = VOP(add)(SIMD_LOAD(full, m, gg + j), SIMD_LOAD(full, m, bias + 2 * H + j));
    V ao = VOP(add)(SIMD_LOAD(full, m, go + j), SIMD_LOAD(full, m, bias + 3 * H + j));
    if (use_peep) {
        ai = VOP(fmadd)(SIMD_LOAD(full, m, peep + j), cpj, ai);
        af = VOP(fmadd)(SIMD_LOAD(full, m, peep + H + j), cpj, af);
    }
    V i = SUF(sigmoid_v)(ai), f = SUF(sigmoid_v)(af), g = SUF(tanh_v)(ag);
    V cn = VOP(fmadd)(f, cpj, VOP(mul)(i, g));
    if (use_peep)
        ao = VOP(fmadd)(SIMD_LOAD(full, m, peep + 2 * H + j), cn, ao);
    V o = SUF(sigmoid_v)(ao);
    SIMD_STORE(full, m, gi + j, i);
    SIMD_STORE(full, m, gf + j, f);
    SIMD_STORE(full, m, gg + j, g);
    SIMD_STORE(full, m, go + j, o);
    SIMD_STORE(full, m, cr + j, cn);
    SIMD_STORE(full, m, hr + j, VOP(mul)(o, SUF(tanh_v)(cn)));
}

/* gates_impl.h's forward_body, LANES hidden units at a time; flags constant after
 * inlining. */
SIMD_INLINE void SUF(forward_body)(int rows, int H, int u0, int u1, REAL *gates,
                                   const REAL *bias, const REAL *peep, const REAL *c_prev,
                                   REAL *c, REAL *h, const int use_peep, const int use_cprev)
{
    const int n = u1 - u0;
    const MASK m = SUF(tail_mask)(n % LANES);
    bias += u0;
    if (use_peep)
        peep += u0;
    for (int r = 0; r < rows; r++) {
        REAL *gi = gates + (size_t)r * 4 * H + u0;
        const REAL *cp = use_cprev ? c_prev + (size_t)r * H + u0 : c_prev;
        REAL *cr = c + (size_t)r * H + u0, *hr = h + (size_t)r * H + u0;
        int j = 0;
        for (; j + LANES <= n; j += LANES)
            SUF(forward_vec)(H, j, gi, bias, peep, cp, cr, hr, use_peep, use_cprev, 1, m);
        if (j < n)
            SUF(forward_vec)(H, j, gi, bias, peep, cp, cr, hr, use_peep, use_cprev, 0, m);
    }
}

SIMD_FN void ISA_SUF(clstm_gates_forward_units)(int rows, int H, int u0, int u1,
                                                 REAL *gates, const REAL *bias,
                                                 const REAL *peephole, const REAL *c_prev,
                                                 REAL *c, REAL *h)
{
    CLSTM_WITH_GATE_FLAGS(SUF(forward_body), peephole, c_prev, rows, H, u0, u1, gates, bias,
                          peephole, c_prev, c, h);
}

/* One vector of gates_impl.h's backward loop. */
SIMD_INLINE void SUF(backward_vec)(int H, int j, REAL *gi, const REAL *peep, const REAL *cp,
                                   const REAL *cr, const REAL *dhr, REAL *dcr,
                                   const int use_peep, const int use_cprev, const int full,
                                   MASK m)
{
    const V one = VOP(set1)(1);
    REAL *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
    V i = SIMD_LOAD(full, m, gi + j), f = SIMD_LOAD(full, m, gf + j);
    V g = SIMD_LOAD(full, m, gg + j), o = SIMD_LOAD(full, m, go + j);
    V cpj = use_cprev ? SIMD_LOAD(full, m, cp + j) : VOP(setzero)();
    V tc = SUF(tanh_v)(SIMD_LOAD(full, m, cr + j));
    V dhj = SIMD_LOAD(full, m, dhr + j);
    V dho = VOP(mul)(dhj, o);
    V dao = VOP(mul)(VOP(mul)(dhj, tc), VOP(mul)(o, VOP(sub)(one, o)));
    V dcn = VOP(fmadd)(dho, VOP(fnmadd)(tc, tc, one), SIMD_LOAD(full, m, dcr + j));
    if (use_peep)
        dcn = VOP(fmadd)(dao, SIMD_LOAD(full, m, peep + 2 * H + j), dcn);
    V dai = VOP(mul)(VOP(mul)(dcn, g), VOP(mul)(i, VOP(sub)(one, i)));
    V daf = VOP(mul)(VOP(mul)(dcn, cpj), VOP(mul)(f, VOP(sub)(one, f)));
    V dag = VOP(mul)(VOP(mul)(dcn, i), VOP(fnmadd)(g, g, one));
    V dcp = VOP(mul)(dcn, f);
    if (use_peep) {
        dcp = VOP(fmadd)(dai, SIMD_LOAD(full, m, peep + j), dcp);
        dcp = VOP(fmadd)(daf, SIMD_LOAD(full, m, peep + H + j), dcp);
    }
    SIMD_STORE(full, m, gi + j, dai);
    SIMD_STORE(full, m, gf + j, daf);
    SIMD_STORE(full, m, gg + j, dag);
    SIMD_STORE(full, m, go + j, dao);
    SIMD_STORE(full, m, dcr + j, dcp);
}

/* gates_impl.h's backward_body, LANES hidden units at a time. */
SIMD_INLINE void SUF(backward_body)(int rows, int H, int u0, int u1, REAL *gates,
                                    const REAL *peep, const REAL *c_prev, const REAL *c,
                                    const REAL *dh, REAL *dc, const int use_peep,
                                    const int use_cprev)
{
    const int n = u1 - u0;
    const MASK m = SUF(tail_mask)(n % LANES);
    if (use_peep)
        peep += u0;
    for (int r = 0; r < rows; r++) {
        REAL *gi = gates + (size_t)r * 4 * H + u0;
        const REAL *cp = use_cprev ? c_prev + (size_t)r * H + u0 : c_prev;
        const REAL *cr = c + (size_t)r * H + u0, *dhr = dh + (size_t)r * H + u0;
        REAL *dcr = dc + (size_t)r * H + u0;
        int j = 0;
        for (; j + LANES <= n; j += LANES)
            SUF(backward_vec)(H, j, gi, peep, cp, cr, dhr, dcr, use_peep, use_cprev, 1, m);
        if (j < n)
            SUF(backward_vec)(H, j, gi, peep, cp, cr, dhr, dcr, use_peep, use_cprev, 0, m);
    }
}

SIMD_FN void ISA_SUF(clstm_gates_backward_units)(int rows, int H, int u0, int u1,
                                                  REAL *gates, const REAL *peephole,
                                                  const REAL *c_prev, const REAL *c,
                                                  const REAL *dh, REAL *dc)
{
    CLSTM_WITH_GATE_FLAGS(SUF(backward_body), peephole, c_prev, rows, H, u0, u1, gates,
                          peephole, c_prev, c, dh, dc);
}

/* The GRU's gate loops (gates_impl.h's gru_forward_body / gru_backward_body), LANES
 * hidden units at a time. */
SIMD_INLINE void SUF(gru_forward_vec)(int H, int j, REAL *gr, REAL *hr, const REAL *b_ih,
                                      const REAL *b_hh, const REAL *hp, REAL *ho,
                                      const int use_bias, const int use_hprev, const int full,
                                      MASK m)
{
    V ar = VOP(add)(SIMD_LOAD(full, m, gr + j), SIMD_LOAD(full, m, hr + j));
    V az = VOP(add)(SIMD_LOAD(full, m, gr + H + j), SIMD_LOAD(full, m, hr + H + j));
    V an = SIMD_LOAD(full, m, gr + 2 * H + j);
    V nh = SIMD_LOAD(full, m, hr + 2 * H + j);
    if (use_bias) {
        ar = VOP(add)(ar, VOP(add)(SIMD_LOAD(full, m, b_ih + j), SIMD_LOAD(full, m, b_hh + j)));
        az = VOP(add)(az, VOP(add)(SIMD_LOAD(full, m, b_ih + H + j),
                                   SIMD_LOAD(full, m, b_hh + H + j)));
        an = VOP(add)(an, SIMD_LOAD(full, m, b_ih + 2 * H + j));
        nh = VOP(add)(nh, SIMD_LOAD(full, m, b_hh + 2 * H + j));
    }
    V r = SUF(sigmoid_v)(ar), z = SUF(sigmoid_v)(az);
    V n = SUF(tanh_v)(VOP(fmadd)(r, nh, an));
    V hpj = use_hprev ? SIMD_LOAD(full, m, hp + j) : VOP(setzero)();
    SIMD_STORE(full, m, gr + j, r);
    SIMD_STORE(full, m, gr + H + j, z);
    SIMD_STORE(full, m, gr + 2 * H + j, n);
    SIMD_STORE(full, m, hr + 2 * H + j, nh);
    SIMD_STORE(full, m, ho + j, VOP(fmadd)(z, VOP(sub)(hpj, n), n));
}

SIMD_INLINE void SUF(gru_forward_body)(int rows, int H, int u0, int u1, REAL *gates,
                                       REAL *gh, const REAL *b_ih, const REAL *b_hh,
                                       const REAL *h_prev, REAL *h, const int use_bias,
                                       const int use_hprev)
{
    const int n = u1 - u0;
    const MASK m = SUF(tail_mask)(n % LANES);
    if (use_bias) {
        b_ih += u0;
        b_hh += u0;
    }
    for (int r = 0; r < rows; r++) {
        REAL *gr = gates + (size_t)r * 3 * H + u0, *hr = gh + (size_t)r * 3 * H + u0;
        const REAL *hp = use_hprev ? h_prev + (size_t)r * H + u0 : h_prev;
        REAL *ho = h + (size_t)r * H + u0;
        int j = 0;
        for (; j + LANES <= n; j += LANES)
            SUF(gru_forward_vec)(H, j, gr, hr, b_ih, b_hh, hp, ho, use_bias, use_hprev, 1, m);
        if (j < n)
            SUF(gru_forward_vec)(H, j, gr, hr, b_ih, b_hh, hp, ho, use_bias, use_hprev, 0, m);
    }
}

SIMD_FN void ISA_SUF(clstm_gru_gates_forward_units)(int rows, int H, int u0, int u1,
                                                     REAL *gates, REAL *gh, const REAL *b_ih,
                                                     const REAL *b_hh, const REAL *h_prev,
                                                     REAL *h)
{
    CLSTM_WITH_GATE_FLAGS(SUF(gru_forward_body), b_ih, h_prev, rows, H, u0, u1, gates, gh,
                          b_ih, b_hh, h_prev, h);
}

SIMD_INLINE void SUF(gru_backward_vec)(int H, int j, REAL *gr, REAL *hr, const REAL *hp,
                                       const REAL *dhr, REAL *dp, const int use_hprev,
                                       const int accumulate, const int full, MASK m)
{
    const V one = VOP(set1)(1);
    V r = SIMD_LOAD(full, m, gr + j), z = SIMD_LOAD(full, m, gr + H + j);
    V n = SIMD_LOAD(full, m, gr + 2 * H + j), nh = SIMD_LOAD(full, m, hr + 2 * H + j);
    V d = SIMD_LOAD(full, m, dhr + j);
    V hpj = use_hprev ? SIMD_LOAD(full, m, hp + j) : VOP(setzero)();
    V dan = VOP(mul)(VOP(mul)(d, VOP(sub)(one, z)), VOP(fnmadd)(n, n, one));
    V daz = VOP(mul)(VOP(mul)(d, VOP(sub)(hpj, n)), VOP(mul)(z, VOP(sub)(one, z)));
    V dar = VOP(mul)(VOP(mul)(dan, nh), VOP(mul)(r, VOP(sub)(one, r)));
    V dz = VOP(mul)(d, z);
    if (accumulate)
        dz = VOP(add)(SIMD_LOAD(full, m, dp + j), dz);
    SIMD_STORE(full, m, gr + j, dar);
    SIMD_STORE(full, m, gr + H + j, daz);
    SIMD_STORE(full, m, gr + 2 * H + j, dan);
    SIMD_STORE(full, m, hr + j, dar);
    SIMD_STORE(full, m, hr + H + j, daz);
    SIMD_STORE(full, m, hr + 2 * H + j, VOP(mul)(dan, r));
    SIMD_STORE(full, m, dp + j, dz);
}

SIMD_INLINE void SUF(gru_backward_body)(int rows, int H, int u0, int u1, REAL *gates,
                                        REAL *gh, const REAL *h_prev, const REAL *dh,
                                        REAL *dh_prev, const int use_hprev,
                                        const int accumulate)
{
    const int n = u1 - u0;
    const MASK m = SUF(tail_mask)(n % LANES);
    for (int r = 0; r < rows; r++) {
        REAL *gr = gates + (size_t)r * 3 * H + u0, *hr = gh + (size_t)r * 3 * H + u0;
        const REAL *hp = use_hprev ? h_prev + (size_t)r * H + u0 : h_prev;
        const REAL *dhr = dh + (size_t)r * H + u0;
        REAL *dp = dh_prev + (size_t)r * H + u0;
        int j = 0;
        for (; j + LANES <= n; j += LANES)
            SUF(gru_backward_vec)(H, j, gr, hr, hp, dhr, dp, use_hprev, accumulate, 1, m);
        if (j < n)
            SUF(gru_backward_vec)(H, j, gr, hr, hp, dhr, dp, use_hprev, accumulate, 0, m);
    }
}

SIMD_FN void ISA_SUF(clstm_gru_gates_backward_units)(int rows, int H, int u0, int u1,
                                                      REAL *gates, REAL *gh,
                                                      const REAL *h_prev, const REAL *dh,
                                                      REAL *dh_prev, int accumulate)
{
    CLSTM_WITH_GATE_FLAGS(SUF(gru_backward_body), h_prev, accumulate, rows, H, u0, u1, gates,
                          gh, h_prev, dh, dh_prev);
}

SIMD_FN void ISA_SUF(clstm_sigmoid)(long n, const REAL *x, REAL *y)
{
    const MASK m = SUF(tail_mask)((int)(n % LANES));
    long k = 0;
    for (; k + LANES <= n; k += LANES)
        VOP(storeu)(y + k, SUF(sigmoid_v)(VOP(loadu)(x + k)));
    if (k < n)
        VSTORE_MASKED(y + k, m, SUF(sigmoid_v)(VLOAD_MASKED(m, x + k)));
}

SIMD_FN void ISA_SUF(clstm_tanh)(long n, const REAL *x, REAL *y)
{
    const MASK m = SUF(tail_mask)((int)(n % LANES));
    long k = 0;
    for (; k + LANES <= n; k += LANES)
        VOP(storeu)(y + k, SUF(tanh_v)(VOP(loadu)(x + k)));
    if (k < n)
        VSTORE_MASKED(y + k, m, SUF(tanh_v)(VLOAD_MASKED(m, x + k)));
}

/* The parameters of this instantiation (see the top), so the next one starts clean. */
#undef REAL
#undef V
#undef VOP
#undef MASK
#undef LANES
#undef SUF
#undef ISA_SUF
#undef VLOAD_MASKED
#undef VSTORE_MASKED
#undef EXP_MAX
#undef EXP_MIN
#undef LOG2E
#undef LN2_HI
#undef LN2_LO
