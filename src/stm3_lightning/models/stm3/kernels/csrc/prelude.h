// Shared by the CPU kernels: a W-lane float vector type and vectorised exp, sigmoid and softplus.
// Built only through kernels/build.py, which passes the sizes of kernels/constants.py as -D<NAME>=<value>.
#pragma once
#if !defined(STM3_LANES) || !defined(STM3_ATTENTION_MAX_SIZE)
#error "compile through stm3_lightning.models.stm3.kernels.build: it passes -DSTM3_LANES and -DSTM3_ATTENTION_MAX_SIZE"
#endif
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
// Flush denormals to zero (FTZ | DAZ) for the lifetime of the guard: decays multiply states towards 1e-38,
// where denormal arithmetic would be ~100x slower.
struct FlushDenormals {
    unsigned int saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
    ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {};
#endif
#define W STM3_LANES
#define INLINE static inline __attribute__((always_inline))
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
typedef float vfu __attribute__((vector_size(W * 4), aligned(4), may_alias));
INLINE vf ld(const float *p) { return *(const vfu *)p; }
INLINE void st(float *p, vf v) { *(vfu *)p = v; }
INLINE vf splat(float s) { return vf{} + s; }
INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }
// exp(x), about 1 ulp, clamped to [exp(-87), exp(88)]. k = round(x / ln 2) is formed in the low mantissa bits of
// x / ln 2 + 1.5 * 2^23 + 127, so shifting those bits left by 23 gives the float 2^k directly.
INLINE vf vexp(vf x) {
    x = vmin(vmax(x, splat(-87.0f)), splat(88.0f));
    const vf kb = x * 1.44269504088896341f + 12583039.0f;
    const vf k = kb - 12583039.0f;
    const vf r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * (vf)((vi)kb << 23);
}
INLINE vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }
// softplus(x) = max(x, 0) + log1p(exp(-|x|)), with log1p(e) = 2 atanh(e / (2 + e)); sets *sig = sigmoid(x).
// One division: q = 1 / ((1 + e)(2 + e)) gives both 1 / (1 + e) and 1 / (2 + e).
INLINE vf vsoftplus(vf x, vf *sig) {
    const vf e = vexp(-(vf)((vi)x & 0x7fffffff)), q = 1.0f / ((1.0f + e) * (2.0f + e));
    const vf s = e * (1.0f + e) * q, s2 = s * s;
    vf p = s2 * (1.0f / 15) + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    *sig = (x >= 0.0f ? splat(1.0f) : e) * (2.0f + e) * q;
    return vmax(x, vf{}) + 2.0f * s * p;
}
