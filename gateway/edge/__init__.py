"""The client side of the proxy port: the HTTP/1.x front end, its connections and listener, CORS, and the
gateway's own pages."""
