/* The library's entry point: ONNX Runtime calls RegisterCustomOps when a session registers the
 * library (SessionOptions.register_custom_ops_library), and the "effserve" domain gets the ops
 * of attention.c and matmul.c. The number of threads (pool.h) comes from the environment, read at
 * each registration: EFFSERVE_KERNEL_THREADS (core/llm/session.py sets it). */
#include <stdlib.h>
#include <string.h>

#include "ort_api.h"
#include "pool.h"

OrtApiTable effserve_api;

typedef OrtStatus *(*CreateStatusFn)(int, const char *);
typedef const char *(*ErrorMessageFn)(const OrtStatus *);
typedef OrtStatus *(*CreateDomainFn)(const char *, OrtCustomOpDomain **);
typedef OrtStatus *(*DomainAddFn)(OrtCustomOpDomain *, const OrtCustomOp *);
typedef OrtStatus *(*AddDomainFn)(OrtSessionOptions *, OrtCustomOpDomain *);

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && atoi(v) > 0 ? atoi(v) : fallback;
}

__attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(OrtSessionOptions *options,
                                                                    const OrtApiBase *base) {
    effserve_api = base->GetApi(API_VERSION);
    if (!effserve_api) return NULL;
    pool_configure(env_int("EFFSERVE_KERNEL_THREADS", 1));
    /* the table is what ort_api.h expects: a status made here reads back its message */
    OrtStatus *probe = ORT(CreateStatus, CreateStatusFn)(1, "effserve-probe");
    const int layout_ok = probe && strcmp(ORT(GetErrorMessage, ErrorMessageFn)(probe), "effserve-probe") == 0;
    if (probe) ORT(ReleaseStatus, ReleaseStatusFn)(probe);
    if (!layout_ok) return ORT(CreateStatus, CreateStatusFn)(1, "effserve kernels: unexpected ORT API table");
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *st = ORT(CreateCustomOpDomain, CreateDomainFn)("effserve", &domain);
    if (!st) st = ORT(CustomOpDomain_Add, DomainAddFn)(domain, effserve_attention_op(0));
#if defined(__AVX2__) && defined(__FMA__)
    /* float16 KV needs F16C (every AVX2 machine has it) */
    if (!st) st = ORT(CustomOpDomain_Add, DomainAddFn)(domain, effserve_attention_op(1));
#endif
    if (!st) st = ORT(CustomOpDomain_Add, DomainAddFn)(domain, effserve_matmul_op());
    if (!st) st = ORT(AddCustomOpDomain, AddDomainFn)(options, domain);
    return st;
}
