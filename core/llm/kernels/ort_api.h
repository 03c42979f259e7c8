/* The slice of ONNX Runtime's C API the project's kernels use, without ORT's headers.
 *
 * The C API is reached through the function table ONNX Runtime hands over (OrtApiBase::GetApi);
 * ORT_SLOT_* are the entries' positions in that append-only table (stable since API version 13).
 * register.c checks the layout once (a status made here reads back its message).
 */
#ifndef EFFSERVE_ORT_API_H
#define EFFSERVE_ORT_API_H
#include <stddef.h>
#include <stdint.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtShapeInfo OrtShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef void *const *OrtApiTable;
typedef struct {
    OrtApiTable (*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { API_VERSION = 13, TYPE_FLOAT = 1, TYPE_UINT8 = 2, TYPE_INT32 = 6, TYPE_FLOAT16 = 10 };
enum {
    ORT_SLOT_CreateStatus = 0, ORT_SLOT_GetErrorMessage = 2, ORT_SLOT_CreateCustomOpDomain = 26,
    ORT_SLOT_CustomOpDomain_Add = 27, ORT_SLOT_AddCustomOpDomain = 28, ORT_SLOT_KernelInfoGetAttribute_int64 = 86,
    ORT_SLOT_KernelContext_GetInputCount = 88,
    ORT_SLOT_GetTensorMutableData = 51, ORT_SLOT_GetDimensionsCount = 61, ORT_SLOT_GetDimensions = 62,
    ORT_SLOT_GetTensorTypeAndShape = 65, ORT_SLOT_KernelContext_GetInput = 90,
    ORT_SLOT_KernelContext_GetOutput = 91, ORT_SLOT_ReleaseStatus = 93,
    ORT_SLOT_ReleaseTensorTypeAndShapeInfo = 99,
};

typedef struct OrtCustomOp {  /* the fields of custom-op struct version 13 */
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *, OrtApiTable, const OrtKernelInfo *);
    const char *(*GetName)(const struct OrtCustomOp *);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *);
    int (*GetInputType)(const struct OrtCustomOp *, size_t);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *);
    int (*GetOutputType)(const struct OrtCustomOp *, size_t);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *);
    void (*KernelCompute)(void *, OrtKernelContext *);
    void (*KernelDestroy)(void *);
    int (*GetInputCharacteristic)(const struct OrtCustomOp *, size_t);
    int (*GetOutputCharacteristic)(const struct OrtCustomOp *, size_t);
    int (*GetInputMemoryType)(const struct OrtCustomOp *, size_t);
} OrtCustomOp;

/* set by RegisterCustomOps (register.c) before any kernel runs */
extern OrtApiTable effserve_api __attribute__((visibility("hidden")));
#define ORT(slot, type) ((type)effserve_api[ORT_SLOT_##slot])

typedef OrtStatus *(*GetInputFn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*InputCountFn)(const OrtKernelContext *, size_t *);
typedef OrtStatus *(*GetOutputFn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef OrtStatus *(*MutableDataFn)(OrtValue *, void **);
typedef OrtStatus *(*TypeShapeFn)(const OrtValue *, OrtShapeInfo **);
typedef OrtStatus *(*DimCountFn)(const OrtShapeInfo *, size_t *);
typedef OrtStatus *(*DimsFn)(const OrtShapeInfo *, int64_t *, size_t);
typedef void (*ReleaseShapeFn)(OrtShapeInfo *);
typedef void (*ReleaseStatusFn)(OrtStatus *);

typedef OrtStatus *(*AttrIntFn)(const OrtKernelInfo *, const char *, int64_t *);

/* an int attribute of the op's node, or `fallback` where it has none */
static inline int64_t int_attribute(const OrtKernelInfo *info, const char *name, int64_t fallback) {
    int64_t v = fallback;
    OrtStatus *st = ORT(KernelInfoGetAttribute_int64, AttrIntFn)(info, name, &v);
    if (st) { ORT(ReleaseStatus, ReleaseStatusFn)(st); return fallback; }
    return v;
}

static inline void *data_of(const OrtValue *v) {
    void *p = NULL;
    OrtStatus *st = ORT(GetTensorMutableData, MutableDataFn)((OrtValue *)v, &p);
    if (st) { ORT(ReleaseStatus, ReleaseStatusFn)(st); return NULL; }
    return p;
}

static inline size_t dims_of(const OrtValue *v, int64_t *dims, size_t max_dims) {
    OrtShapeInfo *info = NULL;
    size_t n = 0;
    OrtStatus *st = ORT(GetTensorTypeAndShape, TypeShapeFn)(v, &info);
    if (st) { ORT(ReleaseStatus, ReleaseStatusFn)(st); return 0; }
    st = ORT(GetDimensionsCount, DimCountFn)(info, &n);
    if (!st && n <= max_dims) st = ORT(GetDimensions, DimsFn)(info, dims, n);
    if (st) { ORT(ReleaseStatus, ReleaseStatusFn)(st); n = 0; }
    ORT(ReleaseTensorTypeAndShapeInfo, ReleaseShapeFn)(info);
    return n <= max_dims ? n : 0;
}

/* the ops each file registers (register.c adds them to the "effserve" domain) */
const OrtCustomOp *effserve_attention_op(int half_kv) __attribute__((visibility("hidden")));
const OrtCustomOp *effserve_matmul_op(void) __attribute__((visibility("hidden")));
#endif
