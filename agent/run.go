package agent

import (
	"context"
	"errors"
)

// run starts the agent in the mode the options select.
func run(ctx context.Context, o Options) error {
	_ = ctx
	_ = o
	return errors.New("the agent is not wired yet")
}
