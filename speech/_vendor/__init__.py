"""Third-party code carried unmodified in the source tree; see README.md beside this file."""
