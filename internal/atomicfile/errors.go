package atomicfile

import "errors"

// ErrNotRegular is returned when the target path exists and is not a
// regular file (a directory, a device, a socket): it is never replaced.
var ErrNotRegular = errors.New("atomicfile: target exists and is not a regular file")
