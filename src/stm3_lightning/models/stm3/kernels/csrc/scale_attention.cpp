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

template <int DT, int QT>
static void attn_rows(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    const int D = DT ? DT : (int)a->D, Q = QT ? QT : (int)a->Q, DD = D * D;
    const float *wts = a->w, *bias = a->b;
    float q[MS][MS], k[MS][MS], v[MS][MS], att[MS][MS], o[MS][MS];
    float dq[MS][MS], dk[MS][MS], dv[MS][MS], dout[MS][MS];
    for (int64_t r = r0; r < r1; ++r) {
        const float *g = a->g + r * D * Q;
        for (int f = 0; f < D; ++f)
            for (int p = 0; p < Q; ++p) {
                float sq = bias[f], sk = bias[D + f], sv = bias[2 * D + f];
                for (int i = 0; i < D; ++i) {
                    const float x = g[i * Q + p];
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
        for (int f = 0; f < D; ++f)
            for (int p = 0; p < Q; ++p) {
                const float gy = dy[f * Q + p];
                db[3 * D + f] += gy;
                for (int d = 0; d < D; ++d) dw[3 * DD + f * D + d] += (double)(gy * o[d][p]);
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
        float *dg = a->dg + r * D * Q;
        for (int i = 0; i < D * Q; ++i) dg[i] = 0.0f;
        float (*grads[3])[MS] = {dq, dk, dv};
        for (int j = 0; j < 3; ++j) {
            float (*dx)[MS] = grads[j];
            const float *Wj = wts + j * DD;
            for (int f = 0; f < D; ++f)
                for (int p = 0; p < Q; ++p) {
                    const float gx = dx[f][p];
                    db[j * D + f] += gx;
                    for (int i = 0; i < D; ++i) {
                        dw[j * DD + f * D + i] += (double)(gx * g[i * Q + p]);
                        dg[i * Q + p] += Wj[f * D + i] * gx;
                    }
                }
        }
    }
}

static void attn_dispatch(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    if (a->D == 4 && a->Q == 4) attn_rows<4, 4>(a, r0, r1, dw, db);
    else attn_rows<0, 0>(a, r0, r1, dw, db);
}

extern "C" void stm3_attn_fwd(const AttnArgs *a, int64_t r0, int64_t r1) {
    attn_dispatch(a, r0, r1, nullptr, nullptr);
}

// dw: [4, D, D], db: [4, D] float64 accumulators of this chunk (zeroed by the caller).
extern "C" void stm3_attn_bwd(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    attn_dispatch(a, r0, r1, dw, db);
}
