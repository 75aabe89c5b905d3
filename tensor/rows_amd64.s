// AVX2+FMA row kernels: exp rows, row max, GELU. Portable Go twins with the
// same formulas: expScaledRowGo (softmax_expf.go), geluCDF (gelu.go).

//go:build amd64 && !purego

#include "textflag.h"

// rowc: 32-byte vectors of 8 equal lanes, one per constant below.
// thr = -87.3
DATA rowc<>+0(SB)/4, $0xc2ae999a
DATA rowc<>+4(SB)/4, $0xc2ae999a
DATA rowc<>+8(SB)/4, $0xc2ae999a
DATA rowc<>+12(SB)/4, $0xc2ae999a
DATA rowc<>+16(SB)/4, $0xc2ae999a
DATA rowc<>+20(SB)/4, $0xc2ae999a
DATA rowc<>+24(SB)/4, $0xc2ae999a
DATA rowc<>+28(SB)/4, $0xc2ae999a
// hi = 88.0
DATA rowc<>+32(SB)/4, $0x42b00000
DATA rowc<>+36(SB)/4, $0x42b00000
DATA rowc<>+40(SB)/4, $0x42b00000
DATA rowc<>+44(SB)/4, $0x42b00000
DATA rowc<>+48(SB)/4, $0x42b00000
DATA rowc<>+52(SB)/4, $0x42b00000
DATA rowc<>+56(SB)/4, $0x42b00000
DATA rowc<>+60(SB)/4, $0x42b00000
// log2e = 1.4426950408889634
DATA rowc<>+64(SB)/4, $0x3fb8aa3b
DATA rowc<>+68(SB)/4, $0x3fb8aa3b
DATA rowc<>+72(SB)/4, $0x3fb8aa3b
DATA rowc<>+76(SB)/4, $0x3fb8aa3b
DATA rowc<>+80(SB)/4, $0x3fb8aa3b
DATA rowc<>+84(SB)/4, $0x3fb8aa3b
DATA rowc<>+88(SB)/4, $0x3fb8aa3b
DATA rowc<>+92(SB)/4, $0x3fb8aa3b
// c1 = 0.693359375
DATA rowc<>+96(SB)/4, $0x3f318000
DATA rowc<>+100(SB)/4, $0x3f318000
DATA rowc<>+104(SB)/4, $0x3f318000
DATA rowc<>+108(SB)/4, $0x3f318000
DATA rowc<>+112(SB)/4, $0x3f318000
DATA rowc<>+116(SB)/4, $0x3f318000
DATA rowc<>+120(SB)/4, $0x3f318000
DATA rowc<>+124(SB)/4, $0x3f318000
// c2 = -0.00021219444
DATA rowc<>+128(SB)/4, $0xb95e8083
DATA rowc<>+132(SB)/4, $0xb95e8083
DATA rowc<>+136(SB)/4, $0xb95e8083
DATA rowc<>+140(SB)/4, $0xb95e8083
DATA rowc<>+144(SB)/4, $0xb95e8083
DATA rowc<>+148(SB)/4, $0xb95e8083
DATA rowc<>+152(SB)/4, $0xb95e8083
DATA rowc<>+156(SB)/4, $0xb95e8083
// p0 = 0.000198756915
DATA rowc<>+160(SB)/4, $0x39506967
DATA rowc<>+164(SB)/4, $0x39506967
DATA rowc<>+168(SB)/4, $0x39506967
DATA rowc<>+172(SB)/4, $0x39506967
DATA rowc<>+176(SB)/4, $0x39506967
DATA rowc<>+180(SB)/4, $0x39506967
DATA rowc<>+184(SB)/4, $0x39506967
DATA rowc<>+188(SB)/4, $0x39506967
// p1 = 0.0013981999507
DATA rowc<>+192(SB)/4, $0x3ab743ce
DATA rowc<>+196(SB)/4, $0x3ab743ce
DATA rowc<>+200(SB)/4, $0x3ab743ce
DATA rowc<>+204(SB)/4, $0x3ab743ce
DATA rowc<>+208(SB)/4, $0x3ab743ce
DATA rowc<>+212(SB)/4, $0x3ab743ce
DATA rowc<>+216(SB)/4, $0x3ab743ce
DATA rowc<>+220(SB)/4, $0x3ab743ce
// p2 = 0.0083334519073
DATA rowc<>+224(SB)/4, $0x3c088908
DATA rowc<>+228(SB)/4, $0x3c088908
DATA rowc<>+232(SB)/4, $0x3c088908
DATA rowc<>+236(SB)/4, $0x3c088908
DATA rowc<>+240(SB)/4, $0x3c088908
DATA rowc<>+244(SB)/4, $0x3c088908
DATA rowc<>+248(SB)/4, $0x3c088908
DATA rowc<>+252(SB)/4, $0x3c088908
// p3 = 0.041665795894
DATA rowc<>+256(SB)/4, $0x3d2aa9c1
DATA rowc<>+260(SB)/4, $0x3d2aa9c1
DATA rowc<>+264(SB)/4, $0x3d2aa9c1
DATA rowc<>+268(SB)/4, $0x3d2aa9c1
DATA rowc<>+272(SB)/4, $0x3d2aa9c1
DATA rowc<>+276(SB)/4, $0x3d2aa9c1
DATA rowc<>+280(SB)/4, $0x3d2aa9c1
DATA rowc<>+284(SB)/4, $0x3d2aa9c1
// p4 = 0.16666665459
DATA rowc<>+288(SB)/4, $0x3e2aaaaa
DATA rowc<>+292(SB)/4, $0x3e2aaaaa
DATA rowc<>+296(SB)/4, $0x3e2aaaaa
DATA rowc<>+300(SB)/4, $0x3e2aaaaa
DATA rowc<>+304(SB)/4, $0x3e2aaaaa
DATA rowc<>+308(SB)/4, $0x3e2aaaaa
DATA rowc<>+312(SB)/4, $0x3e2aaaaa
DATA rowc<>+316(SB)/4, $0x3e2aaaaa
// p5 = 0.50000001201
DATA rowc<>+320(SB)/4, $0x3f000000
DATA rowc<>+324(SB)/4, $0x3f000000
DATA rowc<>+328(SB)/4, $0x3f000000
DATA rowc<>+332(SB)/4, $0x3f000000
DATA rowc<>+336(SB)/4, $0x3f000000
DATA rowc<>+340(SB)/4, $0x3f000000
DATA rowc<>+344(SB)/4, $0x3f000000
DATA rowc<>+348(SB)/4, $0x3f000000
// one = 1.0
DATA rowc<>+352(SB)/4, $0x3f800000
DATA rowc<>+356(SB)/4, $0x3f800000
DATA rowc<>+360(SB)/4, $0x3f800000
DATA rowc<>+364(SB)/4, $0x3f800000
DATA rowc<>+368(SB)/4, $0x3f800000
DATA rowc<>+372(SB)/4, $0x3f800000
DATA rowc<>+376(SB)/4, $0x3f800000
DATA rowc<>+380(SB)/4, $0x3f800000
// half = 0.5
DATA rowc<>+384(SB)/4, $0x3f000000
DATA rowc<>+388(SB)/4, $0x3f000000
DATA rowc<>+392(SB)/4, $0x3f000000
DATA rowc<>+396(SB)/4, $0x3f000000
DATA rowc<>+400(SB)/4, $0x3f000000
DATA rowc<>+404(SB)/4, $0x3f000000
DATA rowc<>+408(SB)/4, $0x3f000000
DATA rowc<>+412(SB)/4, $0x3f000000
// isq2 = 0.7071067811865476
DATA rowc<>+416(SB)/4, $0x3f3504f3
DATA rowc<>+420(SB)/4, $0x3f3504f3
DATA rowc<>+424(SB)/4, $0x3f3504f3
DATA rowc<>+428(SB)/4, $0x3f3504f3
DATA rowc<>+432(SB)/4, $0x3f3504f3
DATA rowc<>+436(SB)/4, $0x3f3504f3
DATA rowc<>+440(SB)/4, $0x3f3504f3
DATA rowc<>+444(SB)/4, $0x3f3504f3
// isq2pi = 0.3989422804014327
DATA rowc<>+448(SB)/4, $0x3ecc422a
DATA rowc<>+452(SB)/4, $0x3ecc422a
DATA rowc<>+456(SB)/4, $0x3ecc422a
DATA rowc<>+460(SB)/4, $0x3ecc422a
DATA rowc<>+464(SB)/4, $0x3ecc422a
DATA rowc<>+468(SB)/4, $0x3ecc422a
DATA rowc<>+472(SB)/4, $0x3ecc422a
DATA rowc<>+476(SB)/4, $0x3ecc422a
// e0 = 0.17087277
DATA rowc<>+480(SB)/4, $0x3e2ef945
DATA rowc<>+484(SB)/4, $0x3e2ef945
DATA rowc<>+488(SB)/4, $0x3e2ef945
DATA rowc<>+492(SB)/4, $0x3e2ef945
DATA rowc<>+496(SB)/4, $0x3e2ef945
DATA rowc<>+500(SB)/4, $0x3e2ef945
DATA rowc<>+504(SB)/4, $0x3e2ef945
DATA rowc<>+508(SB)/4, $0x3e2ef945
// e1 = -0.82215223
DATA rowc<>+512(SB)/4, $0xbf527892
DATA rowc<>+516(SB)/4, $0xbf527892
DATA rowc<>+520(SB)/4, $0xbf527892
DATA rowc<>+524(SB)/4, $0xbf527892
DATA rowc<>+528(SB)/4, $0xbf527892
DATA rowc<>+532(SB)/4, $0xbf527892
DATA rowc<>+536(SB)/4, $0xbf527892
DATA rowc<>+540(SB)/4, $0xbf527892
// e2 = 1.48851587
DATA rowc<>+544(SB)/4, $0x3fbe87b0
DATA rowc<>+548(SB)/4, $0x3fbe87b0
DATA rowc<>+552(SB)/4, $0x3fbe87b0
DATA rowc<>+556(SB)/4, $0x3fbe87b0
DATA rowc<>+560(SB)/4, $0x3fbe87b0
DATA rowc<>+564(SB)/4, $0x3fbe87b0
DATA rowc<>+568(SB)/4, $0x3fbe87b0
DATA rowc<>+572(SB)/4, $0x3fbe87b0
// e3 = -1.13520398
DATA rowc<>+576(SB)/4, $0xbf914e5d
DATA rowc<>+580(SB)/4, $0xbf914e5d
DATA rowc<>+584(SB)/4, $0xbf914e5d
DATA rowc<>+588(SB)/4, $0xbf914e5d
DATA rowc<>+592(SB)/4, $0xbf914e5d
DATA rowc<>+596(SB)/4, $0xbf914e5d
DATA rowc<>+600(SB)/4, $0xbf914e5d
DATA rowc<>+604(SB)/4, $0xbf914e5d
// e4 = 0.27886807
DATA rowc<>+608(SB)/4, $0x3e8ec7cc
DATA rowc<>+612(SB)/4, $0x3e8ec7cc
DATA rowc<>+616(SB)/4, $0x3e8ec7cc
DATA rowc<>+620(SB)/4, $0x3e8ec7cc
DATA rowc<>+624(SB)/4, $0x3e8ec7cc
DATA rowc<>+628(SB)/4, $0x3e8ec7cc
DATA rowc<>+632(SB)/4, $0x3e8ec7cc
DATA rowc<>+636(SB)/4, $0x3e8ec7cc
// e5 = -0.18628806
DATA rowc<>+640(SB)/4, $0xbe3ec24c
DATA rowc<>+644(SB)/4, $0xbe3ec24c
DATA rowc<>+648(SB)/4, $0xbe3ec24c
DATA rowc<>+652(SB)/4, $0xbe3ec24c
DATA rowc<>+656(SB)/4, $0xbe3ec24c
DATA rowc<>+660(SB)/4, $0xbe3ec24c
DATA rowc<>+664(SB)/4, $0xbe3ec24c
DATA rowc<>+668(SB)/4, $0xbe3ec24c
// e6 = 0.09678418
DATA rowc<>+672(SB)/4, $0x3dc636c9
DATA rowc<>+676(SB)/4, $0x3dc636c9
DATA rowc<>+680(SB)/4, $0x3dc636c9
DATA rowc<>+684(SB)/4, $0x3dc636c9
DATA rowc<>+688(SB)/4, $0x3dc636c9
DATA rowc<>+692(SB)/4, $0x3dc636c9
DATA rowc<>+696(SB)/4, $0x3dc636c9
DATA rowc<>+700(SB)/4, $0x3dc636c9
// e7 = 0.37409196
DATA rowc<>+704(SB)/4, $0x3ebf88fb
DATA rowc<>+708(SB)/4, $0x3ebf88fb
DATA rowc<>+712(SB)/4, $0x3ebf88fb
DATA rowc<>+716(SB)/4, $0x3ebf88fb
DATA rowc<>+720(SB)/4, $0x3ebf88fb
DATA rowc<>+724(SB)/4, $0x3ebf88fb
DATA rowc<>+728(SB)/4, $0x3ebf88fb
DATA rowc<>+732(SB)/4, $0x3ebf88fb
// e8 = 1.00002368
DATA rowc<>+736(SB)/4, $0x3f8000c7
DATA rowc<>+740(SB)/4, $0x3f8000c7
DATA rowc<>+744(SB)/4, $0x3f8000c7
DATA rowc<>+748(SB)/4, $0x3f8000c7
DATA rowc<>+752(SB)/4, $0x3f8000c7
DATA rowc<>+756(SB)/4, $0x3f8000c7
DATA rowc<>+760(SB)/4, $0x3f8000c7
DATA rowc<>+764(SB)/4, $0x3f8000c7
// e9 = -1.26551223
DATA rowc<>+768(SB)/4, $0xbfa1fc4e
DATA rowc<>+772(SB)/4, $0xbfa1fc4e
DATA rowc<>+776(SB)/4, $0xbfa1fc4e
DATA rowc<>+780(SB)/4, $0xbfa1fc4e
DATA rowc<>+784(SB)/4, $0xbfa1fc4e
DATA rowc<>+788(SB)/4, $0xbfa1fc4e
DATA rowc<>+792(SB)/4, $0xbfa1fc4e
DATA rowc<>+796(SB)/4, $0xbfa1fc4e
// e127 = 0x7f (int32 lanes)
DATA rowc<>+800(SB)/4, $0x0000007f
DATA rowc<>+804(SB)/4, $0x0000007f
DATA rowc<>+808(SB)/4, $0x0000007f
DATA rowc<>+812(SB)/4, $0x0000007f
DATA rowc<>+816(SB)/4, $0x0000007f
DATA rowc<>+820(SB)/4, $0x0000007f
DATA rowc<>+824(SB)/4, $0x0000007f
DATA rowc<>+828(SB)/4, $0x0000007f
// absmask = 0x7fffffff (int32 lanes)
DATA rowc<>+832(SB)/4, $0x7fffffff
DATA rowc<>+836(SB)/4, $0x7fffffff
DATA rowc<>+840(SB)/4, $0x7fffffff
DATA rowc<>+844(SB)/4, $0x7fffffff
DATA rowc<>+848(SB)/4, $0x7fffffff
DATA rowc<>+852(SB)/4, $0x7fffffff
DATA rowc<>+856(SB)/4, $0x7fffffff
DATA rowc<>+860(SB)/4, $0x7fffffff
GLOBL rowc<>(SB), RODATA|NOPTR, $864

// func expScaledRowAVX2(row []float32, scl, sub float32) float32
// row[i] = exp(row[i]·scl − sub) for len(row) a multiple of 8; returns the
// sum of the results (8 lane partial sums, added lane 0..7 in order).
// Arguments below -87.3 (including -Inf) give exactly 0.
TEXT ·expScaledRowAVX2(SB), NOSPLIT, $0-36
	MOVQ row_base+0(FP), SI
	MOVQ row_len+8(FP), CX
	VBROADCASTSS scl+24(FP), Y0
	VBROADCASTSS sub+28(FP), Y1
	VXORPS Y15, Y15, Y15
	SHRQ $3, CX
	JZ done
loop:
	VMOVUPS (SI), Y6
	VFMSUB213PS Y1, Y0, Y6        // x = z·scl − sub
	VCMPPS $0x15, rowc<>+0(SB), Y6, Y7   // mask = !(x < -87.3): NaN kept
	VMOVUPS rowc<>+0(SB), Y8
	VMAXPS Y6, Y8, Y6                    // clamp; a NaN x passes through
	VMOVUPS rowc<>+32(SB), Y8
	VMINPS Y6, Y8, Y6
	VMULPS rowc<>+64(SB), Y6, Y8
	VCVTPS2DQ Y8, Y9                      // n = round(x·log2e)
	VCVTDQ2PS Y9, Y8
	VFNMADD231PS rowc<>+96(SB), Y8, Y6        // r = x − n·c1 − n·c2
	VFNMADD231PS rowc<>+128(SB), Y8, Y6
	VMOVUPS rowc<>+160(SB), Y8
	VFMADD213PS rowc<>+192(SB), Y6, Y8
	VFMADD213PS rowc<>+224(SB), Y6, Y8
	VFMADD213PS rowc<>+256(SB), Y6, Y8
	VFMADD213PS rowc<>+288(SB), Y6, Y8
	VFMADD213PS rowc<>+320(SB), Y6, Y8
	VMULPS Y6, Y6, Y11
	VFMADD213PS Y6, Y11, Y8              // p·r² + r
	VADDPS rowc<>+352(SB), Y8, Y8
	VPADDD rowc<>+800(SB), Y9, Y9
	VPSLLD $23, Y9, Y9                    // 2^n
	VMULPS Y9, Y8, Y6
	VANDPS Y7, Y6, Y6
	VMOVUPS Y6, (SI)
	VADDPS Y6, Y15, Y15
	ADDQ $32, SI
	DECQ CX
	JNZ loop
done:
	VEXTRACTF128 $1, Y15, X14
	VMOVAPS X15, X0
	VPSHUFD $0x55, X15, X1
	VADDSS X1, X0, X0
	VPSHUFD $0xaa, X15, X1
	VADDSS X1, X0, X0
	VPSHUFD $0xff, X15, X1
	VADDSS X1, X0, X0
	VADDSS X14, X0, X0
	VPSHUFD $0x55, X14, X1
	VADDSS X1, X0, X0
	VPSHUFD $0xaa, X14, X1
	VADDSS X1, X0, X0
	VPSHUFD $0xff, X14, X1
	VADDSS X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+32(FP)
	RET

// func rowMaxAVX2(row []float32) float32
// max over len(row), a positive multiple of 8 (NaNs are not propagated).
TEXT ·rowMaxAVX2(SB), NOSPLIT, $0-28
	MOVQ row_base+0(FP), SI
	MOVQ row_len+8(FP), CX
	VMOVUPS (SI), Y0
	ADDQ $32, SI
	SHRQ $3, CX
	DECQ CX
	JZ mdone
mloop:
	VMAXPS (SI), Y0, Y0
	ADDQ $32, SI
	DECQ CX
	JNZ mloop
mdone:
	VEXTRACTF128 $1, Y0, X1
	VMAXPS X1, X0, X0
	VPSHUFD $0x4e, X0, X1
	VMAXPS X1, X0, X0
	VPSHUFD $0xb1, X0, X1
	VMAXPS X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func geluForwardAVX2(out, in []float32)
// out[i] = in[i]·Φ(in[i]) for len(out) a multiple of 8 (geluCDF's formula).
TEXT ·geluForwardAVX2(SB), NOSPLIT, $0-48
	MOVQ out_base+0(FP), DI
	MOVQ out_len+8(FP), CX
	MOVQ in_base+24(FP), SI
	SHRQ $3, CX
	JZ gfdone
gfloop:
	VMOVUPS (SI), Y0
	VANDPS rowc<>+832(SB), Y0, Y2
	VMULPS rowc<>+416(SB), Y2, Y2             // z = |x|/√2
	VMOVUPS rowc<>+384(SB), Y3
	VFMADD213PS rowc<>+352(SB), Y2, Y3          // 1 + z/2
	VMOVUPS rowc<>+352(SB), Y4
	VDIVPS Y3, Y4, Y4                        // t = 1/(1 + z/2)
	VMOVUPS rowc<>+480(SB), Y5
	VFMADD213PS rowc<>+512(SB), Y4, Y5
	VFMADD213PS rowc<>+544(SB), Y4, Y5
	VFMADD213PS rowc<>+576(SB), Y4, Y5
	VFMADD213PS rowc<>+608(SB), Y4, Y5
	VFMADD213PS rowc<>+640(SB), Y4, Y5
	VFMADD213PS rowc<>+672(SB), Y4, Y5
	VFMADD213PS rowc<>+704(SB), Y4, Y5
	VFMADD213PS rowc<>+736(SB), Y4, Y5
	VFMADD213PS rowc<>+768(SB), Y4, Y5
	VFNMADD231PS Y2, Y2, Y5                  // poly − z²
	VCMPPS $0x15, rowc<>+0(SB), Y5, Y6   // mask = !(x < -87.3): NaN kept
	VMOVUPS rowc<>+0(SB), Y7
	VMAXPS Y5, Y7, Y5                    // clamp; a NaN x passes through
	VMOVUPS rowc<>+32(SB), Y7
	VMINPS Y5, Y7, Y5
	VMULPS rowc<>+64(SB), Y5, Y7
	VCVTPS2DQ Y7, Y8                      // n = round(x·log2e)
	VCVTDQ2PS Y8, Y7
	VFNMADD231PS rowc<>+96(SB), Y7, Y5        // r = x − n·c1 − n·c2
	VFNMADD231PS rowc<>+128(SB), Y7, Y5
	VMOVUPS rowc<>+160(SB), Y7
	VFMADD213PS rowc<>+192(SB), Y5, Y7
	VFMADD213PS rowc<>+224(SB), Y5, Y7
	VFMADD213PS rowc<>+256(SB), Y5, Y7
	VFMADD213PS rowc<>+288(SB), Y5, Y7
	VFMADD213PS rowc<>+320(SB), Y5, Y7
	VMULPS Y5, Y5, Y9
	VFMADD213PS Y5, Y9, Y7              // p·r² + r
	VADDPS rowc<>+352(SB), Y7, Y7
	VPADDD rowc<>+800(SB), Y8, Y8
	VPSLLD $23, Y8, Y8                    // 2^n
	VMULPS Y8, Y7, Y5
	VANDPS Y6, Y5, Y5
	VMULPS Y4, Y5, Y5
	VMULPS rowc<>+384(SB), Y5, Y5              // h = erfc(z)/2
	VMOVUPS rowc<>+352(SB), Y6
	VSUBPS Y5, Y6, Y6                        // 1 − h
	VXORPS Y7, Y7, Y7
	VCMPPS $0x1d, Y7, Y0, Y7               // x >= 0
	VBLENDVPS Y7, Y6, Y5, Y10         // Φ
	VMULPS Y10, Y0, Y10
	VMOVUPS Y10, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ CX
	JNZ gfloop
gfdone:
	VZEROUPPER
	RET

// func geluBackwardAVX2(din, dout, in []float32)
// din[i] += dout[i]·(Φ(x) + x·φ(x)) for len(din) a multiple of 8.
TEXT ·geluBackwardAVX2(SB), NOSPLIT, $0-72
	MOVQ din_base+0(FP), DI
	MOVQ din_len+8(FP), CX
	MOVQ dout_base+24(FP), DX
	MOVQ in_base+48(FP), SI
	SHRQ $3, CX
	JZ gbdone
gbloop:
	VMOVUPS (SI), Y0
	VANDPS rowc<>+832(SB), Y0, Y2
	VMULPS rowc<>+416(SB), Y2, Y2             // z = |x|/√2
	VMOVUPS rowc<>+384(SB), Y3
	VFMADD213PS rowc<>+352(SB), Y2, Y3          // 1 + z/2
	VMOVUPS rowc<>+352(SB), Y4
	VDIVPS Y3, Y4, Y4                        // t = 1/(1 + z/2)
	VMOVUPS rowc<>+480(SB), Y5
	VFMADD213PS rowc<>+512(SB), Y4, Y5
	VFMADD213PS rowc<>+544(SB), Y4, Y5
	VFMADD213PS rowc<>+576(SB), Y4, Y5
	VFMADD213PS rowc<>+608(SB), Y4, Y5
	VFMADD213PS rowc<>+640(SB), Y4, Y5
	VFMADD213PS rowc<>+672(SB), Y4, Y5
	VFMADD213PS rowc<>+704(SB), Y4, Y5
	VFMADD213PS rowc<>+736(SB), Y4, Y5
	VFMADD213PS rowc<>+768(SB), Y4, Y5
	VFNMADD231PS Y2, Y2, Y5                  // poly − z²
	VCMPPS $0x15, rowc<>+0(SB), Y5, Y6   // mask = !(x < -87.3): NaN kept
	VMOVUPS rowc<>+0(SB), Y7
	VMAXPS Y5, Y7, Y5                    // clamp; a NaN x passes through
	VMOVUPS rowc<>+32(SB), Y7
	VMINPS Y5, Y7, Y5
	VMULPS rowc<>+64(SB), Y5, Y7
	VCVTPS2DQ Y7, Y8                      // n = round(x·log2e)
	VCVTDQ2PS Y8, Y7
	VFNMADD231PS rowc<>+96(SB), Y7, Y5        // r = x − n·c1 − n·c2
	VFNMADD231PS rowc<>+128(SB), Y7, Y5
	VMOVUPS rowc<>+160(SB), Y7
	VFMADD213PS rowc<>+192(SB), Y5, Y7
	VFMADD213PS rowc<>+224(SB), Y5, Y7
	VFMADD213PS rowc<>+256(SB), Y5, Y7
	VFMADD213PS rowc<>+288(SB), Y5, Y7
	VFMADD213PS rowc<>+320(SB), Y5, Y7
	VMULPS Y5, Y5, Y9
	VFMADD213PS Y5, Y9, Y7              // p·r² + r
	VADDPS rowc<>+352(SB), Y7, Y7
	VPADDD rowc<>+800(SB), Y8, Y8
	VPSLLD $23, Y8, Y8                    // 2^n
	VMULPS Y8, Y7, Y5
	VANDPS Y6, Y5, Y5
	VMULPS Y4, Y5, Y5
	VMULPS rowc<>+384(SB), Y5, Y5              // h = erfc(z)/2
	VMOVUPS rowc<>+352(SB), Y6
	VSUBPS Y5, Y6, Y6                        // 1 − h
	VXORPS Y7, Y7, Y7
	VCMPPS $0x1d, Y7, Y0, Y7               // x >= 0
	VBLENDVPS Y7, Y6, Y5, Y10         // Φ
	VMULPS Y0, Y0, Y11
	VMULPS rowc<>+384(SB), Y11, Y11
	VXORPS Y12, Y12, Y12
	VSUBPS Y11, Y12, Y11                     // −x²/2
	VCMPPS $0x15, rowc<>+0(SB), Y11, Y6   // mask = !(x < -87.3): NaN kept
	VMOVUPS rowc<>+0(SB), Y7
	VMAXPS Y11, Y7, Y11                    // clamp; a NaN x passes through
	VMOVUPS rowc<>+32(SB), Y7
	VMINPS Y11, Y7, Y11
	VMULPS rowc<>+64(SB), Y11, Y7
	VCVTPS2DQ Y7, Y8                      // n = round(x·log2e)
	VCVTDQ2PS Y8, Y7
	VFNMADD231PS rowc<>+96(SB), Y7, Y11        // r = x − n·c1 − n·c2
	VFNMADD231PS rowc<>+128(SB), Y7, Y11
	VMOVUPS rowc<>+160(SB), Y7
	VFMADD213PS rowc<>+192(SB), Y11, Y7
	VFMADD213PS rowc<>+224(SB), Y11, Y7
	VFMADD213PS rowc<>+256(SB), Y11, Y7
	VFMADD213PS rowc<>+288(SB), Y11, Y7
	VFMADD213PS rowc<>+320(SB), Y11, Y7
	VMULPS Y11, Y11, Y9
	VFMADD213PS Y11, Y9, Y7              // p·r² + r
	VADDPS rowc<>+352(SB), Y7, Y7
	VPADDD rowc<>+800(SB), Y8, Y8
	VPSLLD $23, Y8, Y8                    // 2^n
	VMULPS Y8, Y7, Y11
	VANDPS Y6, Y11, Y11
	VMULPS rowc<>+448(SB), Y11, Y11          // φ(x)
	VFMADD231PS Y11, Y0, Y10                 // Φ + x·φ
	VMOVUPS (DI), Y12
	VFMADD231PS (DX), Y10, Y12               // din += dout·(…)
	VMOVUPS Y12, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, DI
	DECQ CX
	JNZ gbloop
gbdone:
	VZEROUPPER
	RET
