package tensor

// Packing copies a block of op(A) or op(B) into the layout the
// micro-kernels read: consecutive micro-panels, each k-major. Panels are
// zero-padded past the block's edge so edge tiles can run the full kernel.
// The transposes are absorbed here, and each case walks its source in the
// order that reads memory sequentially.

// packNoAsm makes packing use only the portable loops (tests compare the
// two).
var packNoAsm bool

// packA packs the mcb×kcb block of op(A) at row ic, column pc into dst as
// mr-row micro-panels: dst[ir*kcb + p*mr + i] = op(A)[ic+ir+i][pc+p].
func packA(transA bool, a []float32, lda, ic, pc, mcb, kcb, mr int, dst []float32) {
	if transA {
		// op(A)[i][p] = a[p*lda+i]: row p of the stored matrix holds
		// the p-th entry of every panel, contiguously.
		packContiguous(a, lda, pc, ic, kcb, mcb, mr, dst)
		return
	}
	// op(A)[i][p] = a[i*lda+p]: each panel gathers mr rows.
	packStrided(a, lda, ic, pc, mcb, kcb, mr, dst)
}

// packB packs the kcb×ncb block of op(B) at row pc, column jc into dst as
// nr-column micro-panels: dst[jr*kcb + p*nr + j] = op(B)[pc+p][jc+jr+j].
func packB(transB bool, b []float32, ldb, pc, jc, kcb, ncb, nr int, dst []float32) {
	if transB {
		packStrided(b, ldb, jc, pc, ncb, kcb, nr, dst)
		return
	}
	packContiguous(b, ldb, pc, jc, kcb, ncb, nr, dst)
}

// packContiguous packs from a source whose row r0+p holds, from column c0,
// the p-th entry of all w panel lanes: dst[l0*kc + p*w + l] = s[(r0+p)*ld +
// c0+l0+l] for lanes l0 in steps of w up to n.
func packContiguous(s []float32, ld, r0, c0, kc, n, w int, dst []float32) {
	full := n / w * w
	if full > 0 && !packNoAsm && packContiguousAsm(s[r0*ld+c0:], ld, kc, w, n/w, dst) {
		if full == n {
			return
		}
		// Only the partial last panel is left.
		s, dst, n, full = s[full:], dst[full*kc:], n-full, 0
	}
	for p := 0; p < kc; p++ {
		row := s[(r0+p)*ld+c0:]
		row = row[:n]
		off := p * w
		l0 := 0
		switch w {
		case 32:
			for ; l0 < full; l0 += 32 {
				*(*[32]float32)(dst[l0*kc+off:]) = *(*[32]float32)(row[l0:])
			}
		case 16:
			for ; l0 < full; l0 += 16 {
				*(*[16]float32)(dst[l0*kc+off:]) = *(*[16]float32)(row[l0:])
			}
		case 12:
			for ; l0 < full; l0 += 12 {
				*(*[12]float32)(dst[l0*kc+off:]) = *(*[12]float32)(row[l0:])
			}
		default:
			for ; l0 < full; l0 += w {
				copy(dst[l0*kc+off:l0*kc+off+w], row[l0:l0+w])
			}
		}
		if l0 < n {
			out := dst[l0*kc+off : l0*kc+off+w]
			copy(out, row[l0:])
			clear(out[n-l0:])
		}
	}
}

// packStrided packs from a source whose row r0+l holds lane l's entries
// along k from column c0: dst[l0*kc + p*w + l] = s[(r0+l0+l)*ld + c0+p].
// Each panel reads its w rows as parallel sequential streams and writes its
// output sequentially.
func packStrided(s []float32, ld, r0, c0, n, kc, w int, dst []float32) {
	for l0 := 0; l0 < n; l0 += w {
		lanes := min(w, n-l0)
		panel := dst[l0*kc : (l0+w)*kc]
		if lanes == w && !packNoAsm && packStridedAsm(s[(r0+l0)*ld+c0:], ld, kc, w, panel) {
			continue
		}
		if lanes == w && w == 12 {
			packStrided12(s, ld, r0+l0, c0, kc, panel)
			continue
		}
		if lanes == w && w%16 == 0 {
			for h := 0; h < w; h += 16 {
				packStrided16(s, ld, r0+l0+h, c0, kc, panel[h:], w)
			}
			continue
		}
		for l := 0; l < lanes; l++ {
			src := s[(r0+l0+l)*ld+c0:]
			src = src[:kc]
			for p, v := range src {
				panel[p*w+l] = v
			}
		}
		for l := lanes; l < w; l++ {
			for p := 0; p < kc; p++ {
				panel[p*w+l] = 0
			}
		}
	}
}

// packStrided12 is packStrided for one full 12-lane panel.
func packStrided12(s []float32, ld, r, c0, kc int, panel []float32) {
	row := func(i int) []float32 { x := s[(r+i)*ld+c0:]; return x[:kc] }
	s0, s1, s2, s3, s4, s5 := row(0), row(1), row(2), row(3), row(4), row(5)
	s6, s7, s8, s9, s10, s11 := row(6), row(7), row(8), row(9), row(10), row(11)
	panel = panel[:kc*12]
	for p := 0; p < kc; p++ {
		o := (*[12]float32)(panel[p*12:])
		o[0], o[1], o[2], o[3] = s0[p], s1[p], s2[p], s3[p]
		o[4], o[5], o[6], o[7] = s4[p], s5[p], s6[p], s7[p]
		o[8], o[9], o[10], o[11] = s8[p], s9[p], s10[p], s11[p]
	}
}

// packStrided16 packs 16 lanes of a full panel of width w (a multiple of
// 16) starting at panel[0]; wider panels are packed 16 lanes at a time.
func packStrided16(s []float32, ld, r, c0, kc int, panel []float32, w int) {
	row := func(i int) []float32 { x := s[(r+i)*ld+c0:]; return x[:kc] }
	s0, s1, s2, s3, s4, s5, s6, s7 := row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7)
	s8, s9, s10, s11, s12, s13, s14, s15 := row(8), row(9), row(10), row(11), row(12), row(13), row(14), row(15)
	panel = panel[:(kc-1)*w+16]
	for p := 0; p < kc; p++ {
		o := (*[16]float32)(panel[p*w:])
		o[0], o[1], o[2], o[3] = s0[p], s1[p], s2[p], s3[p]
		o[4], o[5], o[6], o[7] = s4[p], s5[p], s6[p], s7[p]
		o[8], o[9], o[10], o[11] = s8[p], s9[p], s10[p], s11[p]
		o[12], o[13], o[14], o[15] = s12[p], s13[p], s14[p], s15[p]
	}
}
