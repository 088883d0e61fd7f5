// Package replication will bootstrap streaming standbys, report their
// status and slot health, promote with gates and fence an old primary. Not
// implemented yet: see the streaming replicas issue.
package replication
