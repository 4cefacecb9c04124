"""Listen-Attend-Spell speech recognition."""
