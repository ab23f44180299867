package devicefile

import "errors"

// ErrInvalid is returned for a device file that does not decode or holds an
// invalid field; the error names the file and the field.
var ErrInvalid = errors.New("devicefile: invalid device file")
