package exitcode

import (
	"errors"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestOf(t *testing.T) {
	assert.Equal(t, 0, Of(nil))
	assert.Equal(t, 3, Of(exec.Command("sh", "-c", "exit 3").Run()))
	assert.Equal(t, Killed, Of(exec.Command("sh", "-c", "kill -9 $$").Run()), "killed by a signal")
	assert.Equal(t, Killed, Of(errors.New("could not start")))
}
