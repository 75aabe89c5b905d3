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
