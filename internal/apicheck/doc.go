// Package apicheck holds the test that keeps spiredb usable as a library:
// no exported name of a public package mentions a type from an internal
// package, which code outside the module could neither build nor match
// with errors.As.
package apicheck
