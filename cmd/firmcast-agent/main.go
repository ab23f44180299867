// Command firmcast-agent is the on-device update agent.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "firmcast-agent: not built yet (see the device-side issue)")
	os.Exit(2)
}
