package chaos

import (
	"fmt"
	"net"
)

// Moving a member to a new address. Every slot has a spare loopback port,
// reserved when the cluster is created: a listener the harness holds until
// the first process that needs the port starts, so nothing else takes it
// meanwhile (a port given up by a move is not held again). Every other
// node's EMBEDRAFT_TEST_DIAL map routes the spare address through a proxy
// of its own from the start, so after a move the moved node is still
// reached through proxies (and Isolate, CutOneWay and the other network
// faults still apply to it).

// Move swaps the node's port and its spare port: its next start listens
// on (and, without -advertise, advertises) http://127.0.0.1:<the spare
// port>. The node must be down. Its flags are unchanged, so -id and -peers
// still name its old address. Moving again moves it back.
func (n *Node) Move() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("node %d is running; stop it before moving it", n.Index)
	}
	n.port, n.sparePort = n.sparePort, n.port
	n.url = fmt.Sprintf("%s://127.0.0.1:%d", n.scheme, n.port)
	// The old port is left free, not held: a peer still dialing it must be
	// refused, as after a real move. A held listener would accept and never
	// answer, and rafthttp's stream dials (no response timeout) would hang
	// on it even after the peer's URL is updated.
	return nil
}

// reserveSpare picks and holds the slot's spare port.
func (n *Node) reserveSpare() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.held, n.sparePort = append(n.held, ln), ln.Addr().(*net.TCPAddr).Port
	return nil
}

// freeHeldPort closes the listener holding the port the next start uses,
// if the harness holds it. The caller holds n.mu.
func (n *Node) freeHeldPort() {
	kept := n.held[:0]
	for _, ln := range n.held {
		if ln.Addr().(*net.TCPAddr).Port == n.port {
			ln.Close()
			continue
		}
		kept = append(kept, ln)
	}
	n.held = kept
}

// releaseSpare closes every listener the harness holds for the slot.
func (n *Node) releaseSpare() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ln := range n.held {
		ln.Close()
	}
	n.held = nil
}
