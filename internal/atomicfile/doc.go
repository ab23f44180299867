// Package atomicfile replaces a file so that a reader, or the system after
// a crash, sees either the old content or the new, never a mix: firmcast's
// one implementation of "write, fsync, rename, fsync the directory".
//
// WriteFile is the durable form, for state that must survive a power cut
// (agent state, fetch progress, keys, broker configuration, device files):
//
//  1. write the data to a temporary file in the same directory
//     (".NAME.tmp*", so the rename stays on one file system);
//  2. set its permission bits to perm, exactly (the umask does not apply);
//  3. fsync it, so the data is on disk before the name points at it;
//  4. close it and rename it over NAME (atomic on POSIX file systems);
//  5. fsync the directory, so the rename itself survives a crash.
//
// WriteFileNoSync skips the two fsyncs. The rename still keeps a reader
// from seeing a partial file, but a host crash may lose the write (or, on
// some file systems, leave an empty file). It is for simulators running
// thousands of devices on one disk, whose "power cuts" are process kills.
//
// If a step before the rename fails, NAME is untouched (it keeps its old
// content, or stays absent) and the temporary file is removed. If the
// directory fsync fails, NAME already holds the new content; the error says
// the rename may not be durable.
//
// The design follows tailscale's atomicfile.WriteFile.
package atomicfile
