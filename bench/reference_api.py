"""The minimal reference lookup app the API benchmark compares against: jsonify + one MGET."""

import os

import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
client = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.get("/api/v0.1/m2-customer-codes")
def codes():
    barcodes = request.args["barcodes"].split(",")
    values = client.mget([f"ref:{b}" for b in barcodes])
    data = [{"barcode": b, "m2CustomerCode": v.decode() if v else None} for b, v in zip(barcodes, values, strict=True)]
    return jsonify({"statusCode": 200, "body": {"status": 200, "data": data}})
