/* scratch.h: the process-wide scratch buffer the conv kernels share, and the
 * allocator settings.  Plain C (no Python): module.c binds them. */
#ifndef DMCP_SCRATCH_H
#define DMCP_SCRATCH_H

#include <stddef.h>

/* Locks the shared scratch and returns it with room for `floats` floats,
 * 64-byte aligned; NULL when it could not grow (*ok = 0) or when floats is 0
 * and nothing was allocated yet (*ok = 1).  Every call, failed or not, must
 * be paired with scratch_release. */
float *scratch_acquire(size_t floats, int *ok);
void scratch_release(void);

/* Floats the scratch holds now. */
size_t scratch_floats(void);

/* Frees the scratch; the next scratch_acquire allocates again. */
void scratch_free(void);

/* glibc: serve large blocks from the heap and keep freed memory, so the
 * activation buffers a training step frees and reallocates reuse their pages
 * (no per-step page faults and zeroing).  Returns whether the allocator
 * accepted the settings (0 off glibc). */
int keep_freed_memory(void);

#endif
