"""The entry points' library functions (train, evaluate, infer), apart from their command lines."""
