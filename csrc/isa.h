/* isa.h: the hot kernel families (conv2d, batchnorm, activation) are compiled
 * once per x86-64 instruction set, from the same source, by the wrappers in
 * csrc/isa/: "base" with the package's baseline flags (x86-64-v2), "avx2"
 * (AVX2 + FMA) and "avx512" (AVX-512 F/BW/DQ/VL).  The public names
 * (conv2d_forward, ...) dispatch to the variant in `dmcp_isa`, the best the
 * CPU supports unless the caller chose another.  On other architectures every
 * slot holds the base build. */
#ifndef DMCP_ISA_H
#define DMCP_ISA_H

enum { DMCP_ISA_BASE = 0, DMCP_ISA_AVX2 = 1, DMCP_ISA_AVX512 = 2, DMCP_ISA_COUNT = 3 };

/* The variant every dispatched call runs; set by dmcp_isa_select. */
extern int dmcp_isa;

const char *dmcp_isa_name(int isa);
/* Whether this CPU (and this build) can run variant `isa`. */
int dmcp_isa_supported(int isa);
/* The best supported variant. */
int dmcp_isa_best(void);
/* Switch to `isa`; returns 0, or -1 (nothing changed) when it is not supported. */
int dmcp_isa_select(int isa);

#endif
