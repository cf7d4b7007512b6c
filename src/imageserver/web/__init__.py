"""The HTTP gateway and the browser viewer it serves (a client of the proxy, like is.js)."""
