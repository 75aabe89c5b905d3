//go:build linux && !race

package collective

// See shm_race.go: without the race detector, the positions are all.
func (r *shmRing) racePublish(bool) {}
func (r *shmRing) raceObserve(bool) {}
