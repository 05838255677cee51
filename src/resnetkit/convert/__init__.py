"""Converters from other frameworks' weight files to resnetkit."""
