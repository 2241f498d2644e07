/* scratch.c: see scratch.h. */
/* posix_memalign is POSIX, not C11 */
#define _POSIX_C_SOURCE 200112L
#include "scratch.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* One scratch buffer sized to the largest request so far, shared by all
 * calls; a mutex serialises users when Python threads call in parallel. */
static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static float *scratch_buf = NULL;
static size_t scratch_len = 0;

float *scratch_acquire(size_t floats, int *ok)
{
    pthread_mutex_lock(&scratch_lock);
    *ok = 1;
    if (floats > scratch_len) {
        free(scratch_buf);
        scratch_buf = NULL;
        scratch_len = 0;
        if (floats > (SIZE_MAX - 63) / sizeof(float)) {
            *ok = 0;
            return NULL;
        }
        size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
        if (posix_memalign((void **)&scratch_buf, 64, bytes) != 0) {
            scratch_buf = NULL;
            *ok = 0;
            return NULL;
        }
        scratch_len = floats;
    }
    return scratch_buf;
}

void scratch_release(void) { pthread_mutex_unlock(&scratch_lock); }

size_t scratch_floats(void)
{
    pthread_mutex_lock(&scratch_lock);
    const size_t len = scratch_len;
    pthread_mutex_unlock(&scratch_lock);
    return len;
}

void scratch_free(void)
{
    pthread_mutex_lock(&scratch_lock);
    free(scratch_buf);
    scratch_buf = NULL;
    scratch_len = 0;
    pthread_mutex_unlock(&scratch_lock);
}

/* A training step frees and reallocates the same large activation buffers
 * every step.  glibc serves blocks above its mmap threshold with fresh
 * mappings and returns them on free, so every step pays page faults and the
 * kernel's page zeroing again (MobileNetV2 batch 32: 25,000 faults and about
 * 0.5 CPU-s per step).  Serving them from the heap and keeping freed memory
 * reuses the pages. */
int keep_freed_memory(void)
{
#ifdef __GLIBC__
    return mallopt(M_MMAP_MAX, 0) && mallopt(M_TRIM_THRESHOLD, INT_MAX);
#else
    return 0;
#endif
}
