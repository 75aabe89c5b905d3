package sampling

import "sort"

// docSource is what the samplers read tokens from: documents addressed by
// index whose lengths are known without reading their tokens. memDocs holds
// documents in memory; the sources of a prepared dataset (prepared.go) read a
// memory-mapped one, so a sampler touches only the tokens it returns.
type docSource interface {
	numDocs() int
	docLen(i int) int
	// appendTokens appends tokens [from, to) of document i to dst.
	appendTokens(dst []int32, i, from, to int) []int32
}

// memDocs is a docSource of documents in memory.
type memDocs []Document

func (m memDocs) numDocs() int     { return len(m) }
func (m memDocs) docLen(i int) int { return len(m[i].Tokens) }
func (m memDocs) appendTokens(dst []int32, i, from, to int) []int32 {
	return append(dst, m[i].Tokens[from:to]...)
}

// stream is a source's documents laid end to end, addressed by offset.
type stream struct {
	src    docSource
	starts []int64 // starts[i] = offset of document i; starts[n] = total
}

func newStream(src docSource) stream {
	s := stream{src: src, starts: make([]int64, src.numDocs()+1)}
	for i := 0; i < src.numDocs(); i++ {
		s.starts[i+1] = s.starts[i] + int64(src.docLen(i))
	}
	return s
}

func (s stream) total() int64 { return s.starts[len(s.starts)-1] }

// read appends n tokens starting at offset at (in [0, total)), continuing
// from the start after the end; the stream must not be empty.
func (s stream) read(dst []int32, at int64, n int) []int32 {
	i := sort.Search(len(s.starts)-1, func(k int) bool { return s.starts[k+1] > at })
	for n > 0 {
		if at >= s.total() {
			at, i = 0, 0
		}
		for s.starts[i+1] <= at {
			i++
		}
		from := int(at - s.starts[i])
		take := int(min(int64(n), s.starts[i+1]-at))
		dst = s.src.appendTokens(dst, i, from, from+take)
		n -= take
		at += int64(take)
	}
	return dst
}
