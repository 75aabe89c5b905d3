package cluster

import (
	"bytes"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// keeperRecord is step's record of two workers' entries.
func keeperRecord(step int64) spsa.Record {
	return spsa.Record{Step: step, Entries: []spsa.Entry{{Worker: 1, Dir: 0, Raw: uint32(step)}, {Worker: 2, Dir: 0, Raw: uint32(3*step + 1)}}}
}

// Whatever bytes an append carries, the coordinator's log stays a log:
// an append is refused with an error or taken whole, and the file reads
// back as exactly the records taken (no panic, nothing half-written).
func FuzzSPSAKeeperAppend(f *testing.F) {
	f.Add(spsa.AppendRecords(nil, keeperRecord(0), keeperRecord(1)))
	f.Add(spsa.AppendRecords(nil, keeperRecord(1)))
	f.Add([]byte{1, 2, 3})
	f.Add(spsa.AppendRecords(nil, spsa.Record{Step: 0, Entries: []spsa.Entry{{Worker: 9}}}, keeperRecord(1)))
	f.Add(spsa.AppendRecords(nil, keeperRecord(2), keeperRecord(3), keeperRecord(4)))
	cfg := train.DefaultJobConfig().SPSA
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		k, err := openSPSALogKeeper(dir, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		first := spsa.AppendRecords(nil, keeperRecord(0))
		if _, _, err := k.append(5, first); err != nil {
			t.Fatal(err)
		}
		_, want, _ := spsa.DecodeLog(bytes.NewReader(append(spsa.EncodeLogHeader(spsa.LogParams{}), first...)))
		if next, _, err := k.append(5, data); err == nil {
			recs, derr := spsa.DecodeRecords(bytes.NewReader(data), 0)
			if derr != nil {
				t.Fatalf("accepted undecodable records: %v", derr)
			}
			for _, r := range recs {
				if r.Step == int64(len(want)) {
					want = append(want, r)
				}
			}
			if next != int64(len(want)) {
				t.Fatalf("next step %d, want %d", next, len(want))
			}
		}
		_, got, err := spsa.ReadLog(filepath.Join(dir, SPSALogName))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("the log holds %+v (%v), want %+v", got, err, want)
		}
	})
}
