"""The serving-overhead benchmark's handler: every request's decoded body comes back unchanged."""


class Echo:
    def initialize(self, ctx):
        pass

    def handle(self, requests, ctx):
        return requests
