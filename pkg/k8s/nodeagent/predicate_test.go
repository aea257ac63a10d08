package nodeagent

import (
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
)

func eventFor(obj client.Object) event.CreateEvent { return event.CreateEvent{Object: obj} }
