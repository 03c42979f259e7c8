/* The kernels' worker threads. Every thread taking part calls `work(ctx)`, which takes items
 * from a counter of its own until none is left; each item is computed whole by one thread, so
 * how items fall on threads never changes a result.
 *
 * After a call that asks for it (`spin`) the workers spin for a short while, then sleep: in graphs
 * whose every heavy op is the project's (ONNX Runtime then runs them with one thread and no
 * workers of its own), ops follow each other within microseconds and a wake-up would cost more
 * than the op. Otherwise they sleep at once: ORT's own workers need the cores between the calls.
 * The ops learn which from their node's `pool_spin` attribute (core/quant/graph_edit.own_matmul). */
#ifndef EFFSERVE_POOL_H
#define EFFSERVE_POOL_H
#include <stdint.h>

/* threads, the caller included */
void pool_configure(int threads) __attribute__((visibility("hidden")));
int pool_threads(void) __attribute__((visibility("hidden")));
/* work(ctx) on the caller and on the workers; inline only when `parallel` is 0 */
void pool_run(void (*work)(void *ctx), void *ctx, int parallel, int spin) __attribute__((visibility("hidden")));
#endif
