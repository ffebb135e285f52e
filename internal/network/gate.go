package network

import "sync"

// gate counts the operations in flight on a pool and, once closed, admits
// no more.
type gate struct {
	mu     sync.Mutex
	closed bool // guarded by mu
	wg     sync.WaitGroup
}

// enter registers an operation in flight, or returns ErrClosed. Every
// successful enter is paired with a leave.
func (g *gate) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.wg.Add(1)
	return nil
}

// leave ends an operation registered by enter.
func (g *gate) leave() { g.wg.Done() }

// close admits no more operations and waits for those in flight.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
