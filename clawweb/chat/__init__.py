"""The stateful chat: conversations as message trees, the generations that answer them, search, export and
import, share links."""
