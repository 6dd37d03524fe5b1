"""Small pure check functions: (conversation, ...) -> Iterator[Finding]. One module per stage."""
