// Causal single-head attention over the Q scale tokens of each row g[r]: [D, Q] (token p = column p).
#include <cmath>

#include "prelude.h"

// Static per-row buffers hold up to MS features and scales.
#define MS STM3_ATTENTION_MAX_SIZE

struct AttnArgs {
    const float *g, *dy;   // [R, D, Q] contiguous; dy: backward only
    const float *w, *b;    // w: [4, D, D] (q, k, v, out; row = output feature); b: [4, D]
    float *y, *dg;         // [R, D, Q]: forward output / input gradient
    int64_t D, Q;
    float masked, root_d;  // masked score, sqrt(D)
};

// One output feature's share of a row's projection gradients: dw[i] += sum_p gy[p] * xt[p][i] and
// db += sum_p gy[p], summed over the Q tokens in float (contiguous, vectorised), then added to the float64
// accumulators of the chunk.
INLINE void accumulate_row(const float *gy, const float (*xt)[MS], int D, int Q, double *dw, double *db) {
    float acc[MS], sb = 0.0f;
    for (int i = 0; i < D; ++i) acc[i] = 0.0f;
    for (int p = 0; p < Q; ++p) {
        sb += gy[p];
        for (int i = 0; i < D; ++i) acc[i] += gy[p] * xt[p][i];
    }
    *db += sb;
    for (int i = 0; i < D; ++i) dw[i] += (double)acc[i];
}

template <int DT, int QT>
static void attn_rows(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    const int D = DT ? DT : (int)a->D, Q = QT ? QT : (int)a->Q, DD = D * D;
    const float *wts = a->w, *bias = a->b;
    float q[MS][MS], k[MS][MS], v[MS][MS], att[MS][MS], o[MS][MS];
    float dq[MS][MS], dk[MS][MS], dv[MS][MS], dout[MS][MS];
    for (int64_t r = r0; r < r1; ++r) {
        const float *g = a->g + r * D * Q;
        float gt[MS][MS];  // gt[p][i] = g[i, p]: the projections and their gradients run over contiguous features
        for (int i = 0; i < D; ++i)
            for (int p = 0; p < Q; ++p) gt[p][i] = g[i * Q + p];
        for (int f = 0; f < D; ++f)
            for (int p = 0; p < Q; ++p) {
                float sq = bias[f], sk = bias[D + f], sv = bias[2 * D + f];
                for (int i = 0; i < D; ++i) {
                    const float x = gt[p][i];
                    sq += wts[f * D + i] * x;
                    sk += wts[DD + f * D + i] * x;
                    sv += wts[2 * DD + f * D + i] * x;
                }
                q[f][p] = sq; k[f][p] = sk; v[f][p] = sv;
            }
        for (int p = 0; p < Q; ++p) {  // scores and softmax over the key scales s (s < p masked)
            float m = -INFINITY;
            for (int s = 0; s < Q; ++s) {
                float sc = a->masked;
                if (s >= p) {
                    float dot = 0.0f;
                    for (int d = 0; d < D; ++d) dot += q[d][p] * k[d][s];
                    sc = dot / a->root_d;
                }
                att[p][s] = sc;
                m = sc > m ? sc : m;
            }
            float sum = 0.0f;
            for (int s = 0; s < Q; ++s) { att[p][s] = expf(att[p][s] - m); sum += att[p][s]; }
            const float inv = 1.0f / sum;
            for (int s = 0; s < Q; ++s) att[p][s] *= inv;
        }
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) {
                float acc = 0.0f;
                for (int s = 0; s < Q; ++s) acc += att[p][s] * v[d][s];
                o[d][p] = acc;
            }
        const float *Wo = wts + 3 * DD;
        if (!dw) {
            float *y = a->y + r * D * Q;
            for (int f = 0; f < D; ++f)
                for (int p = 0; p < Q; ++p) {
                    float acc = bias[3 * D + f];
                    for (int d = 0; d < D; ++d) acc += Wo[f * D + d] * o[d][p];
                    y[f * Q + p] = acc;
                }
            continue;
        }
        const float *dy = a->dy + r * D * Q;
        float ot[MS][MS];
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) ot[p][d] = o[d][p];
        for (int f = 0; f < D; ++f) {
            float dyf[MS];
            for (int p = 0; p < Q; ++p) dyf[p] = dy[f * Q + p];
            accumulate_row(dyf, ot, D, Q, dw + 3 * DD + f * D, db + 3 * D + f);
        }
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) {
                float acc = 0.0f;
                for (int f = 0; f < D; ++f) acc += Wo[f * D + d] * dy[f * Q + p];
                dout[d][p] = acc;
            }
        for (int d = 0; d < D; ++d)
            for (int s = 0; s < Q; ++s) {
                float acc = 0.0f;
                for (int p = 0; p < Q; ++p) acc += att[p][s] * dout[d][p];
                dv[d][s] = acc;
                dk[d][s] = 0.0f;
            }
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) dq[d][p] = 0.0f;
        for (int p = 0; p < Q; ++p) {
            float da[MS], dot = 0.0f;
            for (int s = 0; s < Q; ++s) {
                float acc = 0.0f;
                for (int d = 0; d < D; ++d) acc += dout[d][p] * v[d][s];
                da[s] = acc;
                dot += att[p][s] * acc;
            }
            for (int s = p; s < Q; ++s) {  // masked scores get no gradient
                const float ds = att[p][s] * (da[s] - dot) / a->root_d;
                for (int d = 0; d < D; ++d) {
                    dq[d][p] += ds * k[d][s];
                    dk[d][s] += ds * q[d][p];
                }
            }
        }
        float dgt[MS][MS];  // dgt[p][i] = dg[i, p]
        for (int p = 0; p < Q; ++p)
            for (int i = 0; i < D; ++i) dgt[p][i] = 0.0f;
        float (*grads[3])[MS] = {dq, dk, dv};
        for (int j = 0; j < 3; ++j) {
            float (*dx)[MS] = grads[j];
            const float *Wj = wts + j * DD;
            for (int f = 0; f < D; ++f) {
                accumulate_row(dx[f], gt, D, Q, dw + j * DD + f * D, db + j * D + f);
                for (int p = 0; p < Q; ++p) {
                    const float gx = dx[f][p];
                    for (int i = 0; i < D; ++i) dgt[p][i] += Wj[f * D + i] * gx;
                }
            }
        }
        float *dg = a->dg + r * D * Q;
        for (int i = 0; i < D; ++i)
            for (int p = 0; p < Q; ++p) dg[i * Q + p] = dgt[p][i];
    }
}

static void attn_dispatch(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    // Specialised sizes: D and Q known at compile time unroll and vectorise the projections (4: the PEMS08
    // release, 12: ETTh1's hidden_dim; both with the four scales 1, 3, 5, 7).
    if (a->D == 4 && a->Q == 4) attn_rows<4, 4>(a, r0, r1, dw, db);
    else if (a->D == 12 && a->Q == 4) attn_rows<12, 4>(a, r0, r1, dw, db);
    else attn_rows<0, 0>(a, r0, r1, dw, db);
}

extern "C" void stm3_attn_fwd(const AttnArgs *a, int64_t r0, int64_t r1) {
    attn_dispatch(a, r0, r1, nullptr, nullptr);
}

// dw: [4, D, D], db: [4, D] float64 accumulators of this chunk (zeroed by the caller).
extern "C" void stm3_attn_bwd(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    attn_dispatch(a, r0, r1, dw, db);
}
