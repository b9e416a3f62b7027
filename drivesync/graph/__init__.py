"""Microsoft identity platform and Microsoft Graph over HTTP. Imports neither Flask nor models."""
