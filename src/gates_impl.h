/* Template body of gates.c: included once with REAL = float and once with REAL = double.
 * SUF(name) appends the type's suffix (_f32 or _f64). */

/* The forward body, specialised by the compiler for each constant combination of the
 * flags, so the hot loop carries no branch. */
ALWAYS_INLINE void SUF(forward_body)(int rows, int H, int u0, int u1,
                                     REAL *restrict gates, const REAL *restrict bias,
                                     const REAL *restrict peep, const REAL *restrict c_prev,
                                     REAL *restrict c, REAL *restrict h, const int use_peep,
                                     const int use_cprev)
{
    /* Units u0..u1 only: shift every per-unit array to u0; the strides stay H and 4H. */
    bias += u0;
    if (use_peep)
        peep += u0;
    for (int r = 0; r < rows; r++) {
        REAL *gi = gates + (size_t)r * 4 * H + u0;
        REAL *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        const REAL *cp = use_cprev ? c_prev + (size_t)r * H + u0 : c_prev;
        REAL *cr = c + (size_t)r * H + u0, *hr = h + (size_t)r * H + u0;
        for (int j = 0; j < u1 - u0; j++) {
            REAL cpj = use_cprev ? cp[j] : (REAL)0;
            REAL ai = gi[j] + bias[j];
            REAL af = gf[j] + bias[H + j];
            REAL ag = gg[j] + bias[2 * H + j];
            REAL ao = go[j] + bias[3 * H + j];
            if (use_peep) {
                ai += peep[j] * cpj;
                af += peep[H + j] * cpj;
            }
            REAL i = SUF(sigmoid)(ai);
            REAL f = SUF(sigmoid)(af);
            REAL g = SUF(tanh)(ag);
            REAL cn = f * cpj + i * g;
            if (use_peep)
                ao += peep[2 * H + j] * cn;
            REAL o = SUF(sigmoid)(ao);
            gi[j] = i;
            gf[j] = f;
            gg[j] = g;
            go[j] = o;
            cr[j] = cn;
            hr[j] = o * SUF(tanh)(cn);
        }
    }
}

/* The plain C loop. */
static void SUF(gates_forward_units_c)(int rows, int H, int u0, int u1, REAL *gates,
                                const REAL *bias, const REAL *peephole, const REAL *c_prev,
                                REAL *c, REAL *h)
{
    CLSTM_WITH_GATE_FLAGS(SUF(forward_body), peephole, c_prev, rows, H, u0, u1, gates, bias, peephole, c_prev, c, h);
}

/* The public entry: the intrinsics loop of the level in use (gates_avx512.c,
 * gates_avx2.c), else the C one. */
void SUF(clstm_gates_forward_units)(int rows, int H, int u0, int u1, REAL *gates,
                                    const REAL *bias, const REAL *peephole,
                                    const REAL *c_prev, REAL *c, REAL *h)
{
    switch (clstm_gates_level()) {
    case CLSTM_GATES_AVX512:
        SUF(clstm_gates_forward_units_avx512)(rows, H, u0, u1, gates, bias, peephole, c_prev,
                                              c, h);
        break;
    case CLSTM_GATES_AVX2:
        SUF(clstm_gates_forward_units_avx2)(rows, H, u0, u1, gates, bias, peephole, c_prev,
                                            c, h);
        break;
    default:
        SUF(gates_forward_units_c)(rows, H, u0, u1, gates, bias, peephole, c_prev, c, h);
    }
}

void SUF(clstm_gates_forward)(int rows, int H, REAL *gates, const REAL *bias,
                              const REAL *peephole, const REAL *c_prev, REAL *c, REAL *h)
{
    SUF(clstm_gates_forward_units)(rows, H, 0, H, gates, bias, peephole, c_prev, c, h);
}

ALWAYS_INLINE void SUF(backward_body)(int rows, int H, int u0, int u1,
                                      REAL *restrict gates, const REAL *restrict peep,
                                      const REAL *restrict c_prev, const REAL *restrict c,
                                      const REAL *restrict dh, REAL *restrict dc,
                                      const int use_peep, const int use_cprev)
{
    if (use_peep)
        peep += u0;
    for (int r = 0; r < rows; r++) {
        REAL *gi = gates + (size_t)r * 4 * H + u0;
        REAL *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        const REAL *cp = use_cprev ? c_prev + (size_t)r * H + u0 : c_prev;
        const REAL *cr = c + (size_t)r * H + u0, *dhr = dh + (size_t)r * H + u0;
        REAL *dcr = dc + (size_t)r * H + u0;
        for (int j = 0; j < u1 - u0; j++) {
            REAL i = gi[j], f = gf[j], g = gg[j], o = go[j];
            REAL cpj = use_cprev ? cp[j] : (REAL)0;
            REAL tc = SUF(tanh)(cr[j]);
            REAL dhj = dhr[j];
            REAL dao = dhj * tc * o * (1 - o);
            REAL dcn = dcr[j] + dhj * o * (1 - tc * tc);
            if (use_peep)
                dcn += dao * peep[2 * H + j];
            REAL dai = dcn * g * i * (1 - i);
            REAL daf = dcn * cpj * f * (1 - f);
            REAL dag = dcn * i * (1 - g * g);
            REAL dcp = dcn * f;
            if (use_peep)
                dcp += dai * peep[j] + daf * peep[H + j];
            gi[j] = dai;
            gf[j] = daf;
            gg[j] = dag;
            go[j] = dao;
            dcr[j] = dcp;
        }
    }
}

static void SUF(gates_backward_units_c)(int rows, int H, int u0, int u1, REAL *gates,
                                 const REAL *peephole, const REAL *c_prev, const REAL *c,
                                 const REAL *dh, REAL *dc)
{
    CLSTM_WITH_GATE_FLAGS(SUF(backward_body), peephole, c_prev, rows, H, u0, u1, gates, peephole, c_prev, c, dh, dc);
}

void SUF(clstm_gates_backward_units)(int rows, int H, int u0, int u1, REAL *gates,
                                     const REAL *peephole, const REAL *c_prev, const REAL *c,
                                     const REAL *dh, REAL *dc)
{
    switch (clstm_gates_level()) {
    case CLSTM_GATES_AVX512:
        SUF(clstm_gates_backward_units_avx512)(rows, H, u0, u1, gates, peephole, c_prev, c,
                                               dh, dc);
        break;
    case CLSTM_GATES_AVX2:
        SUF(clstm_gates_backward_units_avx2)(rows, H, u0, u1, gates, peephole, c_prev, c, dh,
                                             dc);
        break;
    default:
        SUF(gates_backward_units_c)(rows, H, u0, u1, gates, peephole, c_prev, c, dh, dc);
    }
}

void SUF(clstm_gates_backward)(int rows, int H, REAL *gates, const REAL *peephole,
                               const REAL *c_prev, const REAL *c, const REAL *dh, REAL *dc)
{
    SUF(clstm_gates_backward_units)(rows, H, 0, H, gates, peephole, c_prev, c, dh, dc);
}

/* ---- The GRU (gates.h has the contract, DEVELOPERS.md the math). Flags: bias or not and
 * a previous state or not (forward); a previous state or not and add into dh_prev or not
 * (backward). h' = n + z ⊙ (h_prev - n) is (1 - z) ⊙ n + z ⊙ h_prev with one FMA, as the
 * intrinsics write it. */
ALWAYS_INLINE void SUF(gru_forward_body)(int rows, int H, int u0, int u1, REAL *restrict gates,
                                         REAL *restrict gh, const REAL *restrict b_ih,
                                         const REAL *restrict b_hh,
                                         const REAL *restrict h_prev, REAL *restrict h,
                                         const int use_bias, const int use_hprev)
{
    /* Units u0..u1 only: every per-unit array shifted to u0; the strides stay 3H and H. */
    if (use_bias) {
        b_ih += u0;
        b_hh += u0;
    }
    for (int r = 0; r < rows; r++) {
        REAL *gr = gates + (size_t)r * 3 * H + u0, *gz = gr + H, *gn = gr + 2 * H;
        REAL *hr = gh + (size_t)r * 3 * H + u0, *hz = hr + H, *hn = hr + 2 * H;
        const REAL *hp = use_hprev ? h_prev + (size_t)r * H + u0 : h_prev;
        REAL *ho = h + (size_t)r * H + u0;
        for (int j = 0; j < u1 - u0; j++) {
            REAL ar = gr[j] + hr[j], az = gz[j] + hz[j], an = gn[j], nh = hn[j];
            if (use_bias) {
                ar += b_ih[j] + b_hh[j];
                az += b_ih[H + j] + b_hh[H + j];
                an += b_ih[2 * H + j];
                nh += b_hh[2 * H + j];
            }
            REAL rv = SUF(sigmoid)(ar);
            REAL zv = SUF(sigmoid)(az);
            REAL nv = SUF(tanh)(an + rv * nh);
            REAL hpj = use_hprev ? hp[j] : (REAL)0;
            gr[j] = rv;
            gz[j] = zv;
            gn[j] = nv;
            hn[j] = nh;
            ho[j] = nv + zv * (hpj - nv);
        }
    }
}

static void SUF(gru_gates_forward_units_c)(int rows, int H, int u0, int u1, REAL *gates,
                                           REAL *gh, const REAL *b_ih, const REAL *b_hh,
                                           const REAL *h_prev, REAL *h)
{
    CLSTM_WITH_GATE_FLAGS(SUF(gru_forward_body), b_ih, h_prev, rows, H, u0, u1, gates, gh,
                          b_ih, b_hh, h_prev, h);
}

void SUF(clstm_gru_gates_forward_units)(int rows, int H, int u0, int u1, REAL *gates,
                                        REAL *gh, const REAL *b_ih, const REAL *b_hh,
                                        const REAL *h_prev, REAL *h)
{
    switch (clstm_gates_level()) {
    case CLSTM_GATES_AVX512:
        SUF(clstm_gru_gates_forward_units_avx512)(rows, H, u0, u1, gates, gh, b_ih, b_hh,
                                                  h_prev, h);
        break;
    case CLSTM_GATES_AVX2:
        SUF(clstm_gru_gates_forward_units_avx2)(rows, H, u0, u1, gates, gh, b_ih, b_hh,
                                                h_prev, h);
        break;
    default:
        SUF(gru_gates_forward_units_c)(rows, H, u0, u1, gates, gh, b_ih, b_hh, h_prev, h);
    }
}

void SUF(clstm_gru_gates_forward)(int rows, int H, REAL *gates, REAL *gh, const REAL *b_ih,
                                  const REAL *b_hh, const REAL *h_prev, REAL *h)
{
    SUF(clstm_gru_gates_forward_units)(rows, H, 0, H, gates, gh, b_ih, b_hh, h_prev, h);
}

ALWAYS_INLINE void SUF(gru_backward_body)(int rows, int H, int u0, int u1, REAL *restrict gates,
                                          REAL *restrict gh, const REAL *restrict h_prev,
                                          const REAL *restrict dh, REAL *restrict dh_prev,
                                          const int use_hprev, const int accumulate)
{
    for (int r = 0; r < rows; r++) {
        REAL *gr = gates + (size_t)r * 3 * H + u0, *gz = gr + H, *gn = gr + 2 * H;
        REAL *hr = gh + (size_t)r * 3 * H + u0, *hz = hr + H, *hn = hr + 2 * H;
        const REAL *hp = use_hprev ? h_prev + (size_t)r * H + u0 : h_prev;
        const REAL *dhr = dh + (size_t)r * H + u0;
        REAL *dp = dh_prev + (size_t)r * H + u0;
        for (int j = 0; j < u1 - u0; j++) {
            REAL rv = gr[j], zv = gz[j], nv = gn[j], nh = hn[j], d = dhr[j];
            REAL hpj = use_hprev ? hp[j] : (REAL)0;
            REAL dan = d * (1 - zv) * (1 - nv * nv);
            REAL daz = d * (hpj - nv) * (zv * (1 - zv));
            REAL dar = dan * nh * (rv * (1 - rv));
            gr[j] = dar;
            gz[j] = daz;
            gn[j] = dan;
            hr[j] = dar;
            hz[j] = daz;
            hn[j] = dan * rv;
            dp[j] = accumulate ? dp[j] + d * zv : d * zv;
        }
    }
}

static void SUF(gru_gates_backward_units_c)(int rows, int H, int u0, int u1, REAL *gates,
                                            REAL *gh, const REAL *h_prev, const REAL *dh,
                                            REAL *dh_prev, int accumulate)
{
    CLSTM_WITH_GATE_FLAGS(SUF(gru_backward_body), h_prev, accumulate, rows, H, u0, u1, gates,
                          gh, h_prev, dh, dh_prev);
}

void SUF(clstm_gru_gates_backward_units)(int rows, int H, int u0, int u1, REAL *gates,
                                         REAL *gh, const REAL *h_prev, const REAL *dh,
                                         REAL *dh_prev, int accumulate)
{
    switch (clstm_gates_level()) {
    case CLSTM_GATES_AVX512:
        SUF(clstm_gru_gates_backward_units_avx512)(rows, H, u0, u1, gates, gh, h_prev, dh,
                                                   dh_prev, accumulate);
        break;
    case CLSTM_GATES_AVX2:
        SUF(clstm_gru_gates_backward_units_avx2)(rows, H, u0, u1, gates, gh, h_prev, dh,
                                                 dh_prev, accumulate);
        break;
    default:
        SUF(gru_gates_backward_units_c)(rows, H, u0, u1, gates, gh, h_prev, dh, dh_prev,
                                        accumulate);
    }
}

void SUF(clstm_gru_gates_backward)(int rows, int H, REAL *gates, REAL *gh, const REAL *h_prev,
                                   const REAL *dh, REAL *dh_prev, int accumulate)
{
    SUF(clstm_gru_gates_backward_units)(rows, H, 0, H, gates, gh, h_prev, dh, dh_prev,
                                        accumulate);
}

CLSTM_CLONES
void SUF(clstm_column_sums)(long rows, int n, const REAL *restrict da, int ld,
                           REAL *restrict db)
{
    for (long r = 0; r < rows; r++) {
        const REAL *row = da + (size_t)r * ld;
        for (int j = 0; j < n; j++)
            db[j] += row[j];
    }
}

CLSTM_CLONES
void SUF(clstm_peephole_grads)(int T, int B, int H, const REAL *restrict da,
                               const REAL *restrict cells, const REAL *restrict c0,
                               REAL *restrict dpeep)
{
    REAL *dwi = dpeep, *dwf = dpeep + H, *dwo = dpeep + 2 * H;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            size_t row = (size_t)t * B + b;
            const REAL *dai = da + row * 4 * H, *daf = dai + H, *dao = dai + 3 * H;
            const REAL *ct = cells + row * H;
            const REAL *cp = t > 0 ? cells + (row - B) * H : (c0 ? c0 + (size_t)b * H : NULL);
            if (cp) {
                for (int j = 0; j < H; j++) {
                    dwi[j] += dai[j] * cp[j];
                    dwf[j] += daf[j] * cp[j];
                }
            }
            for (int j = 0; j < H; j++)
                dwo[j] += dao[j] * ct[j];
        }
    }
}

static void SUF(sigmoid_c)(long n, const REAL *restrict x, REAL *restrict y)
{
    for (long k = 0; k < n; k++)
        y[k] = SUF(sigmoid)(x[k]);
}

static void SUF(tanh_c)(long n, const REAL *restrict x, REAL *restrict y)
{
    for (long k = 0; k < n; k++)
        y[k] = SUF(tanh)(x[k]);
}

void SUF(clstm_sigmoid)(long n, const REAL *x, REAL *y)
{
    switch (clstm_gates_level()) {
    case CLSTM_GATES_AVX512:
        SUF(clstm_sigmoid_avx512)(n, x, y);
        break;
    case CLSTM_GATES_AVX2:
        SUF(clstm_sigmoid_avx2)(n, x, y);
        break;
    default:
        SUF(sigmoid_c)(n, x, y);
    }
}

void SUF(clstm_tanh)(long n, const REAL *x, REAL *y)
{
    switch (clstm_gates_level()) {
    case CLSTM_GATES_AVX512:
        SUF(clstm_tanh_avx512)(n, x, y);
        break;
    case CLSTM_GATES_AVX2:
        SUF(clstm_tanh_avx2)(n, x, y);
        break;
    default:
        SUF(tanh_c)(n, x, y);
    }
}
