package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
)

// Shard file layout (all integers little-endian):
//
//	header   16 bytes: magic "MTCKSHD1", format version u32, reserved u32
//	chunks   the stored bytes of every chunk, back to back, in write order
//	index    JSON shardIndex: every entry with its chunks' offsets, sizes, codecs, CRCs
//	trailer  32 bytes: index offset u64, index length u64, index CRC-32C u32,
//	         file checksum u32, magic "MTCKEND1"
//
// The file checksum is CRC-32C over the header, then each chunk's stored
// CRC-32C (4 bytes little-endian, in file order), then the index: it covers
// every byte before the trailer through the chunk CRCs without a third pass
// over the data, which would cost the writer's single goroutine ~30% of raw
// disk speed.
//
// The index sits at the end so a shard can be written in one streaming pass
// with bounded memory; the trailer is fixed-size so a reader finds it from the
// file size alone, and a file cut short anywhere lacks it.

const (
	shardMagic   = "MTCKSHD1"
	trailerMagic = "MTCKEND1"
	headerSize   = 16
	trailerSize  = 32
	// formatVersion is bumped on any incompatible change of the shard layout.
	formatVersion = 1
	// MaxIndexSize bounds the JSON index a reader will load (256 MiB).
	MaxIndexSize = 256 << 20
	// MaxChunkSize bounds the raw size of one chunk a reader will decode.
	MaxChunkSize = 64 << 20
	// MaxBlobSize bounds one opaque blob a reader will load (1 GiB).
	MaxBlobSize = 1 << 30
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Entry kinds.
const (
	kindF32  = "f32"
	kindBlob = "blob"
)

// Chunk codecs.
const (
	codecRaw    = 0 // stored bytes are the raw bytes
	codecZstd   = 1 // one zstd frame of the raw bytes (blobs; float32 with NoShuffle)
	codecPlanes = 2 // float32 byte planes, each raw or huff0 blocks (planes.go)
)

type chunkEntry struct {
	Off    int64  `json:"off"`   // file offset of the stored bytes
	Stored int64  `json:"len"`   // stored (possibly compressed) length
	Raw    int64  `json:"raw"`   // raw length in bytes
	Codec  uint8  `json:"codec"` // codecRaw, codecZstd or codecPlanes
	SCRC   uint32 `json:"scrc"`  // CRC-32C of the stored bytes
	RCRC   uint32 `json:"rcrc"`  // CRC-32C of the raw bytes (before shuffle)
}

type indexEntry struct {
	Name    string       `json:"name"`
	Kind    string       `json:"kind"`
	Shape   []int64      `json:"shape,omitempty"`
	Region  Region       `json:"region"`
	Shuffle bool         `json:"shuffle,omitempty"` // chunks were offered to the plane codec
	CRC     uint32       `json:"crc"`               // CRC-32C over the chunks' RCRCs (u32 LE, in order)
	Chunks  []chunkEntry `json:"chunks"`
}

type shardIndex struct {
	Version int          `json:"version"`
	Rank    int          `json:"rank"`
	Entries []indexEntry `json:"entries"`
}

func (e *indexEntry) rawSize() int64 {
	var n int64
	for _, c := range e.Chunks {
		n += c.Raw
	}
	return n
}

func encodeHeader() []byte {
	b := make([]byte, headerSize)
	copy(b, shardMagic)
	binary.LittleEndian.PutUint32(b[8:], formatVersion)
	return b
}

func encodeTrailer(indexOff, indexLen int64, indexCRC, fileCRC uint32) []byte {
	b := make([]byte, trailerSize)
	binary.LittleEndian.PutUint64(b[0:], uint64(indexOff))
	binary.LittleEndian.PutUint64(b[8:], uint64(indexLen))
	binary.LittleEndian.PutUint32(b[16:], indexCRC)
	binary.LittleEndian.PutUint32(b[20:], fileCRC)
	copy(b[24:], trailerMagic)
	return b
}

type trailer struct {
	indexOff, indexLen int64
	indexCRC, fileCRC  uint32
}

// decodeTrailer parses the last trailerSize bytes of a file of fileSize bytes.
func decodeTrailer(b []byte, fileSize int64) (trailer, error) {
	var t trailer
	if len(b) != trailerSize {
		return t, fmt.Errorf("trailer is %d bytes, want %d", len(b), trailerSize)
	}
	if string(b[24:]) != trailerMagic {
		return t, errors.New("trailer magic missing (file truncated or not a shard)")
	}
	off := binary.LittleEndian.Uint64(b[0:])
	n := binary.LittleEndian.Uint64(b[8:])
	limit := uint64(fileSize - trailerSize)
	if off < headerSize || off > limit || n > limit-off || off+n != limit {
		return t, fmt.Errorf("index [%d, +%d) does not end at the trailer (file size %d)", off, n, fileSize)
	}
	if n > MaxIndexSize {
		return t, fmt.Errorf("index length %d exceeds %d", n, MaxIndexSize)
	}
	t.indexOff, t.indexLen = int64(off), int64(n)
	t.indexCRC = binary.LittleEndian.Uint32(b[16:])
	t.fileCRC = binary.LittleEndian.Uint32(b[20:])
	return t, nil
}

func checkHeader(b []byte) error {
	if len(b) < headerSize || string(b[:8]) != shardMagic {
		return errors.New("header magic missing (not a shard file)")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return fmt.Errorf("format version %d, this reader knows %d", v, formatVersion)
	}
	return nil
}

// decodeIndex parses and validates an index read from a file whose chunk area
// ends at dataEnd. Every length is checked against the file before any
// reader allocates from it.
func decodeIndex(b []byte, indexCRC uint32, dataEnd int64) (*shardIndex, error) {
	if got := crc32.Checksum(b, crcTable); got != indexCRC {
		return nil, fmt.Errorf("index checksum mismatch: got %08x, trailer says %08x", got, indexCRC)
	}
	var idx shardIndex
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	if idx.Version != formatVersion {
		return nil, fmt.Errorf("index version %d, want %d", idx.Version, formatVersion)
	}
	if idx.Rank < 0 {
		return nil, fmt.Errorf("index rank %d is negative", idx.Rank)
	}
	seen := make(map[string]bool, len(idx.Entries))
	next := int64(headerSize)
	for i := range idx.Entries {
		e := &idx.Entries[i]
		if err := validateEntry(e, &next, dataEnd); err != nil {
			return nil, fmt.Errorf("entry %d (%q): %w", i, e.Name, err)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("entry %d: duplicate name %q", i, e.Name)
		}
		seen[e.Name] = true
	}
	if next != dataEnd {
		return nil, fmt.Errorf("chunks end at %d but the index starts at %d", next, dataEnd)
	}
	return &idx, nil
}

// validateEntry checks one entry; chunks must be contiguous from *next on.
func validateEntry(e *indexEntry, next *int64, dataEnd int64) error {
	if e.Name == "" {
		return errors.New("empty name")
	}
	var want int64
	switch e.Kind {
	case kindF32:
		if err := e.Region.Validate(e.Shape); err != nil {
			return fmt.Errorf("region %v of shape %v: %w", e.Region, e.Shape, err)
		}
		want = e.Region.Len() * 4
	case kindBlob:
		if len(e.Shape) != 0 || e.Shuffle {
			return errors.New("blob with shape or shuffle")
		}
		want = -1
	default:
		return fmt.Errorf("unknown kind %q", e.Kind)
	}
	var raw int64
	for j, c := range e.Chunks {
		if c.Off != *next || c.Stored <= 0 || c.Stored > dataEnd-c.Off {
			return fmt.Errorf("chunk %d at [%d, +%d) is not contiguous inside the data area (expected at %d, data ends at %d)", j, c.Off, c.Stored, *next, dataEnd)
		}
		if c.Raw <= 0 || c.Raw > MaxChunkSize {
			return fmt.Errorf("chunk %d raw size %d outside (0, %d]", j, c.Raw, MaxChunkSize)
		}
		switch c.Codec {
		case codecRaw:
			if c.Stored != c.Raw {
				return fmt.Errorf("chunk %d stored raw with %d bytes for %d", j, c.Stored, c.Raw)
			}
		case codecZstd, codecPlanes:
			// The writer keeps a coded chunk only when it shrank, which also
			// bounds what a reader allocates for the stored bytes.
			if c.Stored >= c.Raw {
				return fmt.Errorf("chunk %d coded with %d bytes for %d raw", j, c.Stored, c.Raw)
			}
			if c.Codec == codecPlanes && e.Kind != kindF32 {
				return fmt.Errorf("chunk %d: plane codec on a %s entry", j, e.Kind)
			}
		default:
			return fmt.Errorf("chunk %d unknown codec %d", j, c.Codec)
		}
		if e.Kind == kindF32 && c.Raw%4 != 0 {
			return fmt.Errorf("chunk %d raw size %d not a multiple of 4", j, c.Raw)
		}
		*next += c.Stored
		raw += c.Raw
	}
	if want >= 0 && raw != want {
		return fmt.Errorf("chunks hold %d raw bytes, region needs %d", raw, want)
	}
	if e.Kind == kindBlob && raw > MaxBlobSize {
		return fmt.Errorf("blob of %d bytes exceeds %d", raw, MaxBlobSize)
	}
	return nil
}
