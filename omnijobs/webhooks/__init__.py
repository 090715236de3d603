"""Signed job webhooks (Standard Webhooks): events, signing, the retry policy and the sender."""
