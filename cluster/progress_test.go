package cluster

import "testing"

// The progress mailbox keeps only the newest update, but never loses a
// validation loss to a newer update without one.
func TestProgressMailboxKeepsValidation(t *testing.T) {
	mb := &progressMailbox{wake: make(chan struct{}, 1)}
	if _, ok := mb.take(); ok {
		t.Fatal("empty mailbox returned an update")
	}
	mb.put(ProgressUpdate{Step: 1, Loss: 3})
	mb.put(ProgressUpdate{Step: 2, Loss: 2.5, HasVal: true, ValLoss: 2.7})
	mb.put(ProgressUpdate{Step: 3, Loss: 2.4})
	u, ok := mb.take()
	if !ok || u.Step != 3 || u.Loss != 2.4 || !u.HasVal || u.ValLoss != 2.7 {
		t.Fatalf("took %+v, want step 3 carrying step 2's validation loss", u)
	}
	if _, ok := mb.take(); ok {
		t.Fatal("update taken twice")
	}
	if len(mb.wake) != 1 {
		t.Fatal("put did not signal the sender")
	}
}
