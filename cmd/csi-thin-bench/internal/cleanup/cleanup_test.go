package cleanup

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestRunsNewestFirstDespiteCancelAndErrors(t *testing.T) {
	var s Stack
	var order []string
	for _, name := range []string{"a", "b", "c"} {
		s.Push(name, func(ctx context.Context) error {
			if ctx.Err() != nil {
				t.Errorf("step %s got a cancelled context", name)
			}
			order = append(order, name)
			if name == "b" {
				return errors.New("boom")
			}
			return nil
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // as after Ctrl-C
	err := s.Run(ctx, time.Second)
	if want := []string{"c", "b", "a"}; !reflect.DeepEqual(order, want) {
		t.Errorf("order = %v, want %v", order, want)
	}
	if err == nil {
		t.Error("the failing step's error was lost")
	}
	if err := s.Run(ctx, time.Second); err != nil || len(order) != 3 {
		t.Errorf("second Run re-ran steps (order %v, err %v)", order, err)
	}
}
