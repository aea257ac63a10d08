package router

import (
	"sync"

	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// notifier wakes the calls waiting on a named resource when the informer
// sees it change. A waiter subscribes before it reads, so no change between
// its read and its wait is lost; wake-ups coalesce (a waiter re-reads the
// object anyway).
type notifier struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

func newNotifier() *notifier {
	return &notifier{subs: map[string]map[chan struct{}]struct{}{}}
}

// subscribe returns a channel that receives after each change of name, and
// the function that ends the subscription.
func (n *notifier) subscribe(name string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs[name] == nil {
		n.subs[name] = map[chan struct{}]struct{}{}
	}
	n.subs[name][ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs[name], ch)
		if len(n.subs[name]) == 0 {
			delete(n.subs, name)
		}
		n.mu.Unlock()
	}
}

func (n *notifier) notify(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[name] {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// handler turns informer events into notifications by object name.
func (n *notifier) handler() toolscache.ResourceEventHandler {
	notifyObj := func(obj any) {
		if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if o, ok := obj.(client.Object); ok {
			n.notify(o.GetName())
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    notifyObj,
		UpdateFunc: func(_, obj any) { notifyObj(obj) },
		DeleteFunc: notifyObj,
	}
}
