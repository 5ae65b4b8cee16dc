"""The send path: claim due rows, prepare them, admit them through the rate limits, send, settle."""
