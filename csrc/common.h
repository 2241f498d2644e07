/* common.h: status codes and small helpers shared by every kernel family.
 * Kernels are plain C99/C11 (no Python); only module.c talks to CPython. */
#ifndef DMCP_COMMON_H
#define DMCP_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DMCP_OK = 0,
    DMCP_ERR_NOMEM = 1,     /* an allocation failed */
    DMCP_ERR_SHAPE = 2,     /* sizes inconsistent (binding should have caught it) */
    DMCP_ERR_VALUE = 3      /* a value out of its domain (label out of range, ...) */
} dmcp_status;

#define DMCP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DMCP_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
