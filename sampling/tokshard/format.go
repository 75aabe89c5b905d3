// Package tokshard is moetrain's pre-tokenized dataset format: token shards
// plus one index of document offsets and lengths, little-endian, versioned and
// checksummed with CRC-32C, written atomically by a streaming Writer and read
// through memory maps by a Reader that returns a document's tokens without
// copying. Prepare turns raw text (directories, text files, JSONL and .gz/.zst
// JSONL) into such a dataset. docs/dataset-format.md describes the bytes.
//
// The package must not import sampling (sampling will read shards through it).
package tokshard

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"unsafe"
)

// Version is the format version written into every header.
const Version = 1

// File names inside a dataset directory.
const (
	IndexFile   = "index.idx"
	SummaryFile = "prepare-summary.json"
)

// ShardName is the file name of shard i.
func ShardName(i int) string { return shardName(i) }

const (
	indexMagic   = "MTTOKIDX"
	trailerMagic = "MTIDXEND"
	shardMagic   = "MTTOKSHD"

	headerSize  = 64 // index and shard headers
	shardEntry  = 16 // tokens u64, docs u64
	docEntry    = 16 // offset u64, length u32, shard u32
	trailerSize = 16 // crc u32, reserved u32, trailerMagic

	// DefaultChunkBytes is the checksum granule of the token payload.
	DefaultChunkBytes = 1 << 20
	// DefaultShardTokens is the target number of tokens per shard.
	DefaultShardTokens = 1 << 28

	maxShards = 1 << 24
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var le = binary.LittleEndian

// littleEndianHost reports whether tokens can be viewed in place.
var littleEndianHost = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// WidthFor is the bytes per token for a vocabulary: 2 (uint16) when every id
// fits in 16 bits, else 4 (int32).
func WidthFor(vocab int) int {
	if vocab <= 1<<16 {
		return 2
	}
	return 4
}

func shardName(i int) string { return fmt.Sprintf("shard-%05d.tok", i) }

// Encoded is a run of tokens checked against a vocabulary and laid out in
// its token width (WidthFor), ready for Writer.WriteEncoded. Only
// AppendEncoded makes one, so a writer can copy it without checking again;
// encoding can then run on many goroutines while one writer copies.
type Encoded struct {
	b     []byte
	vocab int
}

// AppendEncoded appends tokens to e (reusing its buffer when e.Reset was
// used) after checking each lies in [0, vocab).
func AppendEncoded(e Encoded, vocab int, tokens []int32) (Encoded, error) {
	if e.vocab != 0 && e.vocab != vocab {
		return e, fmt.Errorf("tokshard: appending tokens of vocabulary %d to tokens of %d", vocab, e.vocab)
	}
	e.vocab = vocab
	w := WidthFor(vocab)
	for i, t := range tokens {
		if t < 0 || int64(t) >= int64(vocab) {
			return e, fmt.Errorf("tokshard: token %d (index %d) outside the vocabulary [0, %d)", t, i, vocab)
		}
	}
	if w == 2 {
		for _, t := range tokens {
			e.b = le.AppendUint16(e.b, uint16(t))
		}
	} else {
		for _, t := range tokens {
			e.b = le.AppendUint32(e.b, uint32(t))
		}
	}
	return e, nil
}

// Tokens is the number of tokens in e.
func (e Encoded) Tokens() int {
	if e.vocab == 0 {
		return 0
	}
	return len(e.b) / WidthFor(e.vocab)
}

// Reset empties e, keeping its buffer.
func (e Encoded) Reset() Encoded { return Encoded{b: e.b[:0]} }
