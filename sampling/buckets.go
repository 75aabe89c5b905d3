package sampling

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Buckets assigns examples to length buckets. The first key is Len for
// one-length data and In for two-length data; two-length data is split again
// by Out inside each first-level bucket. Buckets are numbered in ascending
// order of (first key, second key): flat index = sum of the sizes of the
// earlier first-level buckets + second-level index.
type Buckets struct {
	Upper    []int   // inclusive upper bounds of the first key, strictly ascending
	Upper2   [][]int // two-length: per first-level bucket, inclusive upper bounds of Out; nil otherwise
	MaxCount []int   // per flat bucket, max examples per batch (bucket batch file); nil = budget only
	offset   []int   // flat index of the first second-level bucket of each first-level bucket
}

// N is the number of (flat) buckets.
func (b *Buckets) N() int {
	if b.Upper2 == nil {
		return len(b.Upper)
	}
	b.index()
	last := len(b.Upper) - 1
	return b.offset[last] + len(b.Upper2[last])
}

func (b *Buckets) index() {
	if b.offset != nil || b.Upper2 == nil {
		return
	}
	b.offset = make([]int, len(b.Upper))
	for i := 1; i < len(b.Upper); i++ {
		b.offset[i] = b.offset[i-1] + len(b.Upper2[i-1])
	}
}

// Index returns the flat bucket of e: the first bucket whose bounds hold it;
// keys above the last bound go to the last bucket.
func (b *Buckets) Index(e Example) int {
	key := e.Len
	if b.Upper2 != nil {
		key = e.In
	}
	i := min(sort.SearchInts(b.Upper, key), len(b.Upper)-1)
	if b.Upper2 == nil {
		return i
	}
	b.index()
	u2 := b.Upper2[i]
	j := min(sort.SearchInts(u2, e.Out), len(u2)-1)
	return b.offset[i] + j
}

// EqualTokenBounds returns at most n strictly ascending inclusive upper bounds
// over keys so that each bucket holds about an equal share of the total
// weight; the last bound is max(maxKey, largest key). keys and weights are
// parallel; they are not modified.
func EqualTokenBounds(keys, weights []int, n, maxKey int) []int {
	idx := make([]int, len(keys))
	total := 0
	for i := range idx {
		idx[i] = i
		total += weights[i]
	}
	sort.SliceStable(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	var bounds []int
	cum, k := 0, 1
	for _, i := range idx {
		cum += weights[i]
		for k < n && float64(cum) >= float64(total)*float64(k)/float64(n) {
			if len(bounds) == 0 || keys[i] > bounds[len(bounds)-1] {
				bounds = append(bounds, keys[i])
			}
			k++
		}
	}
	last := maxKey
	if len(idx) > 0 {
		last = max(last, keys[idx[len(idx)-1]])
	}
	if len(bounds) == 0 || bounds[len(bounds)-1] < last {
		bounds = append(bounds, last)
	}
	return bounds
}

// EstimateBuckets estimates bounds from a seeded sample of at most sample
// examples (0 = all): n first-level buckets at equal total tokens (Len), and
// for two-length data n2 second-level buckets by Out inside each.
func EstimateBuckets(ds *Dataset, n, n2, sample int, seed uint64) *Buckets {
	var ex []Example // the sample
	if n := ds.NumExamples(); sample > 0 && sample < n {
		idx := make([]int32, n) // 4 bytes per example, freed on return
		for i := range idx {
			idx[i] = int32(i)
		}
		r := rng{s: mix(seed, purposeSample)}
		shuffleOf(&r, idx)
		ex = make([]Example, sample)
		for i := range ex {
			ex[i] = ds.Example(int(idx[i]))
		}
	} else {
		ex = make([]Example, 0, n)
		ds.Each(func(_ int, e Example) { ex = append(ex, e) })
	}
	keys := make([]int, len(ex))
	weights := make([]int, len(ex))
	for i, e := range ex {
		keys[i], weights[i] = e.Len, e.Len
		if ds.TwoD {
			keys[i] = e.In
		}
	}
	b := &Buckets{Upper: EqualTokenBounds(keys, weights, n, ds.MaxLen)}
	if !ds.TwoD {
		return b
	}
	b.Upper2 = make([][]int, len(b.Upper))
	groups := make([][]int, len(b.Upper))
	for i := range ex {
		g := min(sort.SearchInts(b.Upper, keys[i]), len(b.Upper)-1)
		groups[g] = append(groups[g], i)
	}
	for g, members := range groups {
		k2 := make([]int, len(members))
		w2 := make([]int, len(members))
		for j, i := range members {
			k2[j], w2[j] = ex[i].Out, ex[i].Len
		}
		b.Upper2[g] = EqualTokenBounds(k2, w2, n2, ds.MaxLen)
	}
	return b
}

// ReadBucketFile reads bucket bounds with a maximum batch size per bucket:
// lines "upper_len batch_size" (one-length) or "upper_in upper_out
// batch_size" (two-length; lines with the same upper_in form one first-level
// bucket). Bounds ascend strictly; the last bounds must reach maxLen so every
// example has a bucket. Blank lines and text after '#' are ignored. Errors
// name the file and line.
func ReadBucketFile(path string, twoD bool, maxLen int) (*Buckets, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bucket batch file: %w", err)
	}
	defer f.Close()
	return parseBucketFile(f, path, twoD, maxLen)
}

// parseBucketFile is ReadBucketFile on a reader; path names it in errors.
func parseBucketFile(f io.Reader, path string, twoD bool, maxLen int) (*Buckets, error) {
	var err error
	want := 2
	if twoD {
		want = 3
	}
	b := &Buckets{}
	if twoD {
		b.Upper2 = [][]int{}
	}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != want {
			return nil, fmt.Errorf("bucket batch file %s:%d: %d fields, want %d", path, line, len(fields), want)
		}
		v := make([]int, want)
		for i, s := range fields {
			if v[i], err = strconv.Atoi(s); err != nil || v[i] <= 0 {
				return nil, fmt.Errorf("bucket batch file %s:%d: field %d %q is not a positive integer", path, line, i+1, s)
			}
		}
		n := len(b.Upper)
		if !twoD {
			if n > 0 && v[0] <= b.Upper[n-1] {
				return nil, fmt.Errorf("bucket batch file %s:%d: bound %d not above the previous %d", path, line, v[0], b.Upper[n-1])
			}
			b.Upper = append(b.Upper, v[0])
			b.MaxCount = append(b.MaxCount, v[1])
			continue
		}
		switch {
		case n > 0 && v[0] == b.Upper[n-1]:
			u2 := b.Upper2[n-1]
			if v[1] <= u2[len(u2)-1] {
				return nil, fmt.Errorf("bucket batch file %s:%d: output bound %d not above the previous %d", path, line, v[1], u2[len(u2)-1])
			}
			b.Upper2[n-1] = append(u2, v[1])
		case n > 0 && v[0] < b.Upper[n-1]:
			return nil, fmt.Errorf("bucket batch file %s:%d: input bound %d below the previous %d", path, line, v[0], b.Upper[n-1])
		default:
			if n > 0 {
				if err := checkLast(path, line-1, "output", b.Upper2[n-1], maxLen); err != nil {
					return nil, err
				}
			}
			b.Upper = append(b.Upper, v[0])
			b.Upper2 = append(b.Upper2, []int{v[1]})
		}
		b.MaxCount = append(b.MaxCount, v[2])
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bucket batch file %s: %w", path, err)
	}
	if len(b.Upper) == 0 {
		return nil, fmt.Errorf("bucket batch file %s: no buckets", path)
	}
	if err := checkLast(path, line, "", b.Upper, maxLen); err != nil {
		return nil, err
	}
	if twoD {
		if err := checkLast(path, line, "output", b.Upper2[len(b.Upper2)-1], maxLen); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func checkLast(path string, line int, what string, bounds []int, maxLen int) error {
	if last := bounds[len(bounds)-1]; last < maxLen {
		return fmt.Errorf("bucket batch file %s:%d: last %s bound %d is below max_len %d, longer examples would have no bucket", path, line, what, last, maxLen)
	}
	return nil
}
