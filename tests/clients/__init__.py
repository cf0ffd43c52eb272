"""Clients no one here wrote (ollama, openai, langchain-ollama), each pointed at the gateway as its docs show."""
