// Fused selective scan (softplus, D skip, silu(z) gate) for CPU, vectorised over W channels.
#include "prelude.h"

static_assert(W == 16, "shuf and hsum16_add are written for 16-lane vectors");

template <int I0, int I1, int I2, int I3, int I4, int I5, int I6, int I7, int I8, int I9, int I10, int I11,
          int I12, int I13, int I14, int I15>
INLINE vf shuf(vf a, vf b) {
    return __builtin_shuffle(a, b, vi{I0, I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13, I14, I15});
}

// out[n] += sum of the lanes of p[n] for n = 0..15 (transpose-and-add tree).
INLINE void hsum16_add(const vf *p, float *out) {
    vf v1[8], v2[4], v3[2];
    for (int i = 0; i < 8; ++i)
        v1[i] = shuf<0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23>(p[2 * i], p[2 * i + 1]) +
                shuf<8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31>(p[2 * i], p[2 * i + 1]);
    for (int i = 0; i < 4; ++i)
        v2[i] = shuf<0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27>(v1[2 * i], v1[2 * i + 1]) +
                shuf<4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31>(v1[2 * i], v1[2 * i + 1]);
    for (int i = 0; i < 2; ++i)
        v3[i] = shuf<0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29>(v2[2 * i], v2[2 * i + 1]) +
                shuf<2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31>(v2[2 * i], v2[2 * i + 1]);
    st(out, ld(out) + shuf<0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30>(v3[0], v3[1]) +
                shuf<1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31>(v3[0], v3[1]));
}

INLINE float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
}

// All [b, L, X] tensors have unit stride along X and (sb, st) strides in elements; D is a multiple of W.
struct View { const float *p; int64_t sb, st; };
struct ScanArgs {
    View u, delta, z, B, C, dy;          // z.p may be null; dy is used by the backward only
    const float *A, *Dskip, *bias;       // A: [N, D] (transposed); Dskip, bias: [D] or null
    float *y, *du, *ddelta, *dz, *dB, *dC;  // contiguous [b, L, D] / [b, L, N] outputs
    int64_t D, N, L;
    int softplus;
};
// Per-channel-block inputs of one time step.
struct Step { vf dt, u, x, sig, zs, zg; };

INLINE const float *at(View v, int64_t b, int64_t t) { return v.p + b * v.sb + t * v.st; }

// Loads step t of channels [d0, d0 + W): dt = softplus(delta + bias), x = dt * u, z gate silu(z) and its slope.
INLINE Step load_step(const ScanArgs &a, int64_t b, int64_t t, int64_t d0) {
    Step s{};
    vf dr = ld(at(a.delta, b, t) + d0);
    if (a.bias) dr += ld(a.bias + d0);
    if (a.softplus) s.dt = vsoftplus(dr, &s.sig);
    else { s.dt = dr; s.sig = splat(1.0f); }
    s.u = ld(at(a.u, b, t) + d0);
    s.x = s.dt * s.u;
    if (a.z.p) {
        const vf z = ld(at(a.z, b, t) + d0), sz = vsigmoid(z);
        s.zs = z * sz;
        s.zg = sz * (1.0f + z * (1.0f - sz));
    }
    return s;
}

// Work buffers of one (batch element, channel block): steps S ([L]), and for the backward states H and decays E
// ([L, N] vf) and pre-gate outputs YP ([L]).
struct Record { vf *H, *E, *YP; Step *S; };

// Forward recurrence over channels [d0, d0 + W) of batch element b: writes y, or with RECORD fills rec instead.
// The steps are computed first, in a loop without dependencies: inside the recurrence their exp/division latency
// would stall it.
template <int NC, bool RECORD>
INLINE void fwd_block(const ScanArgs &a, int64_t b, int64_t d0, Record rec, vf *work) {
    const int64_t N = NC > 0 ? NC : a.N, D = a.D, L = a.L;
    for (int64_t t = 0; t < L; ++t) rec.S[t] = load_step(a, b, t, d0);
    vf hl[NC > 0 ? NC : 1];
    vf *h = NC > 0 ? hl : work;
    for (int64_t n = 0; n < N; ++n) h[n] = vf{};
    const vf dsk = a.Dskip ? ld(a.Dskip + d0) : vf{};
    const float *Bb = at(a.B, b, 0), *Cb = at(a.C, b, 0);
    for (int64_t t = 0; t < L; ++t) {
        const Step &s = rec.S[t];
        const float *bt = Bb + t * a.B.st, *ct = Cb + t * a.C.st;
        vf acc = dsk * s.u;
        for (int64_t n = 0; n < N; ++n) {
            const vf e = vexp(s.dt * ld(a.A + n * D + d0));
            h[n] = e * h[n] + s.x * bt[n];
            acc += h[n] * ct[n];
            if (RECORD) { rec.H[t * N + n] = h[n]; rec.E[t * N + n] = e; }
        }
        if (RECORD) rec.YP[t] = acc;
        else st(a.y + (b * L + t) * D + d0, a.z.p ? acc * s.zs : acc);
    }
}

// Reverse recurrence over channels [d0, d0 + W) of batch element b: writes du, ddelta, dz; adds into the rows of
// dB, dC (zeroed by the caller) and the accumulators dA ([N, D]), dD, dbias ([D]).
template <int NC>
INLINE void bwd_block(const ScanArgs &a, int64_t b, int64_t d0, Record rec, float *dA, float *dD, float *dbias,
                      vf *work) {
    const int64_t N = NC > 0 ? NC : a.N, D = a.D, L = a.L;
    vf gl[NC > 0 ? NC : 1], gal[NC > 0 ? NC : 1], pbl[NC > 0 ? NC : 1], pcl[NC > 0 ? NC : 1];
    vf *g = NC > 0 ? gl : work, *ga = NC > 0 ? gal : work + N;
    vf *pb = NC > 0 ? pbl : work + 2 * N, *pc = NC > 0 ? pcl : work + 3 * N, *zero = work + 4 * N;
    for (int64_t n = 0; n < N; ++n) { g[n] = vf{}; ga[n] = vf{}; zero[n] = vf{}; }
    const vf dsk = a.Dskip ? ld(a.Dskip + d0) : vf{};
    vf gD = vf{}, gbias = vf{};
    const float *Bb = at(a.B, b, 0), *Cb = at(a.C, b, 0);
    for (int64_t t = L - 1; t >= 0; --t) {
        const Step s = rec.S[t];
        const float *bt = Bb + t * a.B.st, *ct = Cb + t * a.C.st;
        const vf *Ht = rec.H + t * N, *Et = rec.E + t * N, *Hp = t > 0 ? Ht - N : zero;
        vf gy = ld(at(a.dy, b, t) + d0);
        const int64_t o = (b * L + t) * D + d0;
        if (a.z.p) {
            st(a.dz + o, gy * rec.YP[t] * s.zg);
            gy *= s.zs;
        }
        vf dx = vf{}, dd = vf{};
        for (int64_t n = 0; n < N; ++n) {
            const vf gn = g[n] + gy * ct[n], e = Et[n], sv = gn * e * Hp[n];
            pc[n] = gy * Ht[n];
            pb[n] = gn * s.x;
            dx += gn * bt[n];
            dd += sv * ld(a.A + n * D + d0);
            ga[n] += sv * s.dt;
            g[n] = gn * e;
        }
        float *dbt = a.dB + (b * L + t) * N, *dct = a.dC + (b * L + t) * N;
        if (NC == 16) {
            hsum16_add(pb, dbt);
            hsum16_add(pc, dct);
        } else {
            for (int64_t n = 0; n < N; ++n) { dbt[n] += hsum(pb[n]); dct[n] += hsum(pc[n]); }
        }
        gD += gy * s.u;
        st(a.du + o, dx * s.dt + gy * dsk);
        const vf gdelta = (dd + dx * s.u) * s.sig;
        st(a.ddelta + o, gdelta);
        gbias += gdelta;
    }
    for (int64_t n = 0; n < N; ++n) st(dA + n * D + d0, ld(dA + n * D + d0) + ga[n]);
    st(dD + d0, ld(dD + d0) + gD);
    st(dbias + d0, ld(dbias + d0) + gbias);
}

template <int NC>
static void fwd_range(const ScanArgs &a, int64_t b0, int64_t b1) {
    vf *work = (vf *)aligned_alloc(64, sizeof(vf) * (a.N + 1));
    Record rec{};
    rec.S = (Step *)aligned_alloc(64, sizeof(Step) * (a.L + 1));
    for (int64_t b = b0; b < b1; ++b)
        for (int64_t d0 = 0; d0 < a.D; d0 += W) fwd_block<NC, false>(a, b, d0, rec, work);
    free(rec.S); free(work);
}

template <int NC>
static void bwd_range(const ScanArgs &a, int64_t b0, int64_t b1, float *dA, float *dD, float *dbias) {
    const int64_t N = a.N, L = a.L;
    Record rec;
    rec.H = (vf *)aligned_alloc(64, sizeof(vf) * (N * L + 1));
    rec.E = (vf *)aligned_alloc(64, sizeof(vf) * (N * L + 1));
    rec.YP = (vf *)aligned_alloc(64, sizeof(vf) * (L + 1));
    rec.S = (Step *)aligned_alloc(64, sizeof(Step) * (L + 1));
    vf *work = (vf *)aligned_alloc(64, sizeof(vf) * (5 * N + 1));
    for (int64_t b = b0; b < b1; ++b) {
        memset(a.dB + b * L * N, 0, sizeof(float) * L * N);
        memset(a.dC + b * L * N, 0, sizeof(float) * L * N);
        for (int64_t d0 = 0; d0 < a.D; d0 += W) {
            fwd_block<NC, true>(a, b, d0, rec, work);
            bwd_block<NC>(a, b, d0, rec, dA, dD, dbias, work);
        }
    }
    free(rec.H); free(rec.E); free(rec.YP); free(rec.S); free(work);
}

extern "C" {
void stm3_scan_fwd(const ScanArgs *a, int64_t b0, int64_t b1) {
    FlushDenormals guard;
    if (a->N == 16) fwd_range<16>(*a, b0, b1);
    else fwd_range<0>(*a, b0, b1);
}
// dA: [N, D], dD, dbias: [D]; accumulated into (one set per concurrent call).
void stm3_scan_bwd(const ScanArgs *a, int64_t b0, int64_t b1, float *dA, float *dD, float *dbias) {
    FlushDenormals guard;
    if (a->N == 16) bwd_range<16>(*a, b0, b1, dA, dD, dbias);
    else bwd_range<0>(*a, b0, b1, dA, dD, dbias);
}
}
