package worker

import "testing"

// The progress mailbox keeps only the newest update, except that an unsent
// update with a validation loss is sent at its own step, never superseded.
func TestProgressMailboxKeepsValidation(t *testing.T) {
	mb := &progressMailbox{wake: make(chan struct{}, 1)}
	if got := mb.take(); len(got) != 0 {
		t.Fatalf("empty mailbox returned %+v", got)
	}
	mb.put(ProgressUpdate{Step: 1, Loss: 3})
	mb.put(ProgressUpdate{Step: 2, Loss: 2.5, HasVal: true, ValLoss: 2.7})
	mb.put(ProgressUpdate{Step: 3, Loss: 2.4})
	mb.put(ProgressUpdate{Step: 4, Loss: 2.3})
	got := mb.take()
	if len(got) != 2 || got[0].Step != 2 || !got[0].HasVal || got[0].ValLoss != 2.7 || got[1].Step != 4 || got[1].HasVal {
		t.Fatalf("took %+v, want step 2 with its validation loss, then step 4", got)
	}
	if got := mb.take(); len(got) != 0 {
		t.Fatalf("updates taken twice: %+v", got)
	}
	if len(mb.wake) != 1 {
		t.Fatal("put did not signal the sender")
	}
}
