"""The shared test kit: helpers every test folder imports (never a test module)."""
