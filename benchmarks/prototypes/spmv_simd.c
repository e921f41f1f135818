#include <stdint.h>
void spmv_i32(int n, const int32_t* rp, const int32_t* col, const float* val, const float* x, float* out) {
    for (int i = 0; i < n; ++i) {
        float acc = 0.f;
        #pragma omp simd reduction(+:acc)
        for (int k = rp[i]; k < rp[i+1]; ++k) acc += val[k] * x[col[k]];
        out[i] = acc;
    }
}
void spmv_u16(int n, const int32_t* rp, const uint16_t* col, const float* val, const float* x, float* out) {
    for (int i = 0; i < n; ++i) {
        float acc = 0.f;
        #pragma omp simd reduction(+:acc)
        for (int k = rp[i]; k < rp[i+1]; ++k) acc += val[k] * x[col[k]];
        out[i] = acc;
    }
}
