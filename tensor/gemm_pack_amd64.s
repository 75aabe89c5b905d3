//go:build amd64 && !purego

#include "textflag.h"

// Packing helpers for the AVX-512 kernel's panel widths (up to 16 rows of
// A, 32 columns of B). Contracts are on the Go declarations in
// gemm_pack_amd64.go.

DATA iota16<>+0(SB)/4, $0
DATA iota16<>+4(SB)/4, $1
DATA iota16<>+8(SB)/4, $2
DATA iota16<>+12(SB)/4, $3
DATA iota16<>+16(SB)/4, $4
DATA iota16<>+20(SB)/4, $5
DATA iota16<>+24(SB)/4, $6
DATA iota16<>+28(SB)/4, $7
DATA iota16<>+32(SB)/4, $8
DATA iota16<>+36(SB)/4, $9
DATA iota16<>+40(SB)/4, $10
DATA iota16<>+44(SB)/4, $11
DATA iota16<>+48(SB)/4, $12
DATA iota16<>+52(SB)/4, $13
DATA iota16<>+56(SB)/4, $14
DATA iota16<>+60(SB)/4, $15
GLOBL iota16<>(SB), RODATA|NOPTR, $64

// func packGatherAVX512(dst, src *float32, ld, kc, w, mask int)
TEXT ·packGatherAVX512(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), AX
	MOVQ kc+24(FP), CX
	MOVQ w+32(FP), DX
	VPBROADCASTD AX, Z2
	VMOVDQU32 iota16<>(SB), Z3
	VPMULLD Z3, Z2, Z1
	// K2 = low w lanes; DX = w*4 bytes per output step
	MOVQ mask+40(FP), R8
	KMOVW R8, K2
	SHLQ $2, DX

gwloop:
	KMOVW K2, K1
	VPXORD Z0, Z0, Z0
	VGATHERDPS (SI)(Z1*4), K1, Z0
	VMOVUPS Z0, K2, (DI)
	ADDQ $4, SI
	ADDQ DX, DI
	DECQ CX
	JNZ gwloop
	VZEROUPPER
	RET

// func packGather32AVX512(dst, src *float32, ld, kc int)
TEXT ·packGather32AVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), AX
	MOVQ kc+24(FP), CX
	VPBROADCASTD AX, Z2
	VMOVDQU32 iota16<>(SB), Z3
	VPMULLD Z3, Z2, Z1
	// R9 = src + 16 rows
	MOVQ AX, R9
	SHLQ $6, R9
	ADDQ SI, R9
	MOVQ $0xffff, R8
	KMOVW R8, K3

g32loop:
	KMOVW K3, K1
	KMOVW K3, K2
	VPXORD Z0, Z0, Z0
	VPXORD Z4, Z4, Z4
	VGATHERDPS (SI)(Z1*4), K1, Z0
	VGATHERDPS (R9)(Z1*4), K2, Z4
	VMOVUPS Z0, (DI)
	VMOVUPS Z4, 64(DI)
	ADDQ $4, SI
	ADDQ $4, R9
	ADDQ $128, DI
	DECQ CX
	JNZ g32loop
	VZEROUPPER
	RET

// func packCopy32AVX512(dst, src *float32, ld, kc, panels int)
TEXT ·packCopy32AVX512(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), AX
	SHLQ $2, AX
	MOVQ kc+24(FP), CX
	MOVQ panels+32(FP), DX
	// R10 = bytes between panels = kc*32*4
	MOVQ CX, R10
	SHLQ $7, R10

c32p:
	MOVQ SI, R11
	MOVQ DI, R12
	MOVQ DX, R13

c32j:
	VMOVUPS (R11), Z0
	VMOVUPS 64(R11), Z1
	VMOVUPS Z0, (R12)
	VMOVUPS Z1, 64(R12)
	ADDQ $128, R11
	ADDQ R10, R12
	DECQ R13
	JNZ c32j
	ADDQ AX, SI
	ADDQ $128, DI
	DECQ CX
	JNZ c32p
	VZEROUPPER
	RET

// func packCopyAVX512(dst, src *float32, ld, kc, panels, w, mask int)
TEXT ·packCopyAVX512(SB), NOSPLIT, $0-56
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), AX
	SHLQ $2, AX
	MOVQ kc+24(FP), CX
	MOVQ panels+32(FP), DX
	MOVQ w+40(FP), BX
	// K1 = low w lanes; BX = w*4 bytes per panel row; R10 = kc*w*4
	// bytes between panels
	MOVQ mask+48(FP), R8
	KMOVW R8, K1
	SHLQ $2, BX
	MOVQ CX, R10
	IMULQ BX, R10

cwp:
	MOVQ SI, R11
	MOVQ DI, R12
	MOVQ DX, R13

cwj:
	VMOVUPS.Z (R11), K1, Z0
	VMOVUPS Z0, K1, (R12)
	ADDQ BX, R11
	ADDQ R10, R12
	DECQ R13
	JNZ cwj
	ADDQ AX, SI
	ADDQ BX, DI
	DECQ CX
	JNZ cwp
	VZEROUPPER
	RET
